"""The metadata writer against real exiftool and real files from other projects.

The rules themselves are table-driven in test_plan, without exiftool.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import MetadataError
from daemon.imaging import decode
from daemon.metadata.exiftool import MetadataWriter, remove_stale_temp_files
from daemon.metadata.plan import cut_bytes, cut_words, sanitize
from daemon.testing.helpers import copy_corpus, read_tags

NON_LATIN = "café – 日本語 – Ελληνικά"


@pytest.fixture(scope="module")
def writer() -> Iterator[MetadataWriter]:
    w = MetadataWriter()
    yield w
    w.close()


def pixels(path: Path) -> str:
    return hashlib.sha256(decode(path).image.tobytes()).hexdigest()


@pytest.mark.parametrize(
    ("name", "embedded", "iptc"),
    [
        ("pillow/hopper.jpg", True, True),
        ("pillow/hopper.tif", True, True),
        ("pillow/hopper.png", True, False),
        ("pillow/hopper.webp", True, False),
        ("pillow/hopper.heif", True, False),
        ("pillow/hopper.avif", True, False),
        ("pillow/hopper.gif", False, False),
        ("pillow/hopper.bmp", False, False),
        ("exiftool/Nikon.nef", False, False),
        ("exiftool/DNG.dng", False, False),
    ],
)
def test_fields_round_trip_per_format(
    writer: MetadataWriter, tmp_path: Path, name: str, embedded: bool, iptc: bool
) -> None:
    [path] = copy_corpus([name], tmp_path)
    before_bytes = path.read_bytes()
    before_pixels = pixels(path) if not name.endswith((".nef", ".dng")) else None
    out = writer.write(path, alt_text=f"alt {NON_LATIN}", description=f"desc {NON_LATIN}", keywords=["dog", "日本"])
    target = Path(out.target)
    assert target == (path if embedded else path.with_name(path.name + ".xmp"))
    got = read_tags(target)
    assert got["XMP-iptcCore:AltTextAccessibility"] == f"alt {NON_LATIN}"
    assert got["XMP-dc:Description"] == f"desc {NON_LATIN}"
    assert got["XMP-dc:Subject"] == ["dog", "日本"]
    assert got["XMP-lr:HierarchicalSubject"] == ["dog", "日本"]
    if iptc:
        assert got["IPTC:Keywords"] == ["dog", "日本"]
        assert got["IPTC:Caption-Abstract"] == f"desc {NON_LATIN}"
    else:
        assert "IPTC:Keywords" not in got
    if not embedded:
        assert path.read_bytes() == before_bytes  # the original is not touched at all
    if before_pixels:
        assert pixels(path) == before_pixels
    assert not list(tmp_path.glob("*_original")) and not list(tmp_path.glob("*_exiftool_tmp"))


def test_a_persons_description_and_keywords_survive(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["exiftool/MWG.jpg"], tmp_path)
    out = writer.write(path, alt_text="a small test image", description="ours", keywords=["square"])
    got = read_tags(
        path,
        "XMP-dc:Description",
        "IFD0:ImageDescription",
        "IPTC:Caption-Abstract",
        "XMP-dc:Subject",
        "IPTC:Keywords",
        "XMP-lr:HierarchicalSubject",
        "XMP-iptcCore:AltTextAccessibility",
    )
    assert got["XMP-dc:Description"] == "WRONG-XMP-Description"
    assert got["IFD0:ImageDescription"] == "RIGHT-EXIF-Description"
    assert got["IPTC:Caption-Abstract"] == "WRONG-IPTC-Description"
    assert got["XMP-dc:Subject"] == ["RIGHT1of2-XMP-Keywords", "RIGHT2of2-XMP-Keywords", "square"]
    assert got["IPTC:Keywords"] == ["WRONG1of2-IPTC-Keywords", "WRONG2of2-IPTC-Keywords", "square"]
    # HierarchicalSubject holds every keyword (Immich reads it instead of dc:subject).
    assert set(got["XMP-lr:HierarchicalSubject"]) == {
        "RIGHT1of2-XMP-Keywords",
        "RIGHT2of2-XMP-Keywords",
        "WRONG1of2-IPTC-Keywords",
        "WRONG2of2-IPTC-Keywords",
        "square",
    }
    assert got["XMP-iptcCore:AltTextAccessibility"] == "a small test image"
    assert set(out.kept) == {"XMP-dc:Description", "IFD0:ImageDescription", "IPTC:Caption-Abstract"}


def test_retag_replaces_only_our_own_values(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["exiftool/IPTC.jpg"], tmp_path)
    first = writer.write(path, alt_text="first alt", description="first", keywords=["cat", "sofa"])
    # A person adds a keyword after us.
    subprocess.run(
        ["exiftool", "-overwrite_original", "-XMP-dc:Subject+=holiday", str(path)], check=True, capture_output=True
    )
    second = writer.write(path, alt_text="second alt", description="second", keywords=["dog"], previous=first.written)
    got = read_tags(
        path, "XMP-dc:Subject", "IPTC:Keywords", "XMP-iptcCore:AltTextAccessibility", "IPTC:Caption-Abstract"
    )
    assert got["XMP-dc:Subject"] == ["holiday", "dog"]
    assert got["IPTC:Keywords"] == ["ExifTool", "Test", "IPTC", "dog"]
    assert got["XMP-iptcCore:AltTextAccessibility"] == "second alt"  # still ours: replaced
    assert got["IPTC:Caption-Abstract"] == "A witty caption"  # the person's: kept
    assert second.written["keywords"] == ["dog"]


def test_alt_text_a_person_edited_is_kept(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    first = writer.write(path, alt_text="ours", description="ours too", keywords=[])
    subprocess.run(
        ["exiftool", "-overwrite_original", "-XMP-iptcCore:AltTextAccessibility=Grace Hopper, portrait", str(path)],
        check=True,
        capture_output=True,
    )
    out = writer.write(
        path, alt_text="new model text", description="new description", keywords=[], previous=first.written
    )
    got = read_tags(path, "XMP-iptcCore:AltTextAccessibility", "XMP-dc:Description")
    assert got == {
        "SourceFile": str(path),
        "XMP-iptcCore:AltTextAccessibility": "Grace Hopper, portrait",
        "XMP-dc:Description": "new description",
    }
    assert out.kept == ["XMP-iptcCore:AltTextAccessibility"]


def test_newline_injection_cannot_erase_tags(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["exiftool/IPTC.jpg"], tmp_path)
    before = read_tags(path, "IPTC:all")
    writer.write(
        path, alt_text="caption\n-all=", description="x\r\n-IPTC:all=\n-o\n/tmp/evil.jpg", keywords=["k\n-all="]
    )
    after = read_tags(path, "IPTC:all", "XMP-iptcCore:AltTextAccessibility", "XMP-dc:Subject")
    for key, value in before.items():
        if key not in ("SourceFile", "IPTC:Keywords", "IPTC:CodedCharacterSet"):
            assert after[key] == value, key
    assert after["XMP-iptcCore:AltTextAccessibility"] == "caption -all="
    assert after["XMP-dc:Subject"] == ["k -all="]
    assert not Path("/tmp/evil.jpg").exists()


def test_a_file_exiftool_rejects_is_a_metadata_error(writer: MetadataWriter, tmp_path: Path) -> None:
    path = tmp_path / "text.jpg"
    path.write_text("not a jpeg")
    with pytest.raises(MetadataError) as err:
        writer.write(path, alt_text="a", description="b", keywords=["c"])
    assert err.value.path == str(path)
    assert err.value.reason.startswith("exiftool: Error: Not a valid JPG")


def test_limits_and_sanitising() -> None:
    assert sanitize("a\nb\tc\u2028d\x00e\u200bf") == "a b c d e f"
    assert cut_words("the quick brown fox", 12) == "the quick"
    assert len(cut_words("x" * 300, 250)) == 250
    assert cut_bytes("日本語", 7) == "日本"  # never half a character
    long_alt = " ".join(["word"] * 100)
    assert len(cut_words(long_alt, 250)) <= 250


def test_alt_text_is_capped_at_250_characters(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    writer.write(path, alt_text=" ".join(["portrait"] * 60), description="d", keywords=[])
    alt = read_tags(path, "XMP-iptcCore:AltTextAccessibility")["XMP-iptcCore:AltTextAccessibility"]
    assert len(alt) <= 250 and alt.endswith("portrait")


def test_stale_exiftool_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / "a.jpg_exiftool_tmp"
    stale.write_bytes(b"partial")
    keep = tmp_path / "sub" / "a.jpg"
    keep.write_bytes(b"x")
    assert remove_stale_temp_files([tmp_path]) == [stale]
    assert not stale.exists() and keep.exists()


@pytest.mark.parametrize("boilerplate", ["OLYMPUS DIGITAL CAMERA", "SONY DSC", "   "])
def test_camera_boilerplate_is_not_a_persons_description(
    writer: MetadataWriter, tmp_path: Path, boilerplate: str
) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    subprocess.run(
        ["exiftool", "-overwrite_original", f"-EXIF:ImageDescription={boilerplate}", str(path)],
        check=True,
        capture_output=True,
    )
    writer.write(path, alt_text="a", description="A portrait of a woman in uniform.", keywords=[])
    assert read_tags(path, "IFD0:ImageDescription")["IFD0:ImageDescription"] == "A portrait of a woman in uniform."


def writer_with(**config: object) -> MetadataWriter:
    from daemon.config import MetadataConfig

    return MetadataWriter(MetadataConfig(**config))  # type: ignore[arg-type]


def test_policy_overwrite_and_off(tmp_path: Path) -> None:
    [path] = copy_corpus(["exiftool/MWG.jpg"], tmp_path)
    with writer_with(description="overwrite", alt_text="off", keywords="off") as w:
        w.write(path, alt_text="ours", description="A new description", keywords=["square"])
    got = read_tags(
        path,
        "XMP-dc:Description",
        "IFD0:ImageDescription",
        "IPTC:Caption-Abstract",
        "XMP-iptcCore:AltTextAccessibility",
        "XMP-dc:Subject",
    )
    assert (
        got["XMP-dc:Description"]
        == got["IFD0:ImageDescription"]
        == got["IPTC:Caption-Abstract"]
        == ("A new description")
    )
    assert "XMP-iptcCore:AltTextAccessibility" not in got  # off: never touched
    assert got["XMP-dc:Subject"] == ["RIGHT1of2-XMP-Keywords", "RIGHT2of2-XMP-Keywords"]


def test_keyword_policy_overwrite_makes_the_list_ours(tmp_path: Path) -> None:
    [path] = copy_corpus(["exiftool/XMP.jpg"], tmp_path)
    with writer_with(keywords="overwrite") as w:
        w.write(path, alt_text="a", description="", keywords=["dog"])
    got = read_tags(path, "XMP-dc:Subject", "XMP-lr:HierarchicalSubject")
    assert got["XMP-dc:Subject"] == ["dog"] and got["XMP-lr:HierarchicalSubject"] == ["dog"]


@pytest.mark.parametrize("name", ["exiftool/IPTC.jpg", "exiftool/XMP.jpg", "exiftool/MWG.jpg"])
def test_pre_existing_keywords_survive_every_run(writer: MetadataWriter, tmp_path: Path, name: str) -> None:
    [path] = copy_corpus([name], tmp_path)
    tags = ("XMP-dc:Subject", "IPTC:Keywords")
    before = read_tags(path, *tags)
    previous = None
    for run in (["cat"], ["dog", "cat"], ["tree"]):
        previous = writer.write(path, alt_text="a", description="d", keywords=run, previous=previous).written
    after = read_tags(path, *tags)
    for tag in tags:
        old = before.get(tag, [])
        old = old if isinstance(old, list) else [old]
        new = after.get(tag, [])
        new = new if isinstance(new, list) else [new]
        assert new[: len(old)] == old, tag  # every person's keyword, in order
        if old or tag == "XMP-dc:Subject":
            assert new[len(old) :] == ["tree"], tag  # and only our latest ones


def test_digikam_tagslist_and_keyword_parent(tmp_path: Path) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    subprocess.run(
        [
            "exiftool",
            "-overwrite_original",
            "-XMP-digiKam:TagsList=People/Grace",
            "-XMP-lr:HierarchicalSubject=People|Grace",
            "-XMP-dc:Subject=Grace",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    with writer_with(keyword_parent="florence") as w:
        first = w.write(path, alt_text="a", description="d", keywords=["uniform", "portrait"])
        w.write(path, alt_text="a", description="d", keywords=["portrait"], previous=first.written)
    got = read_tags(path, "XMP-digiKam:TagsList", "XMP-lr:HierarchicalSubject", "XMP-dc:Subject")
    assert got["XMP-digiKam:TagsList"] == ["People/Grace", "florence/portrait"]
    assert got["XMP-lr:HierarchicalSubject"] == ["People|Grace", "florence|portrait"]
    assert got["XMP-dc:Subject"] == ["Grace", "portrait"]


@pytest.mark.parametrize(
    ("mode", "name", "expected"),
    [
        ("always", "pillow/hopper.jpg", "sidecar"),
        ("never", "pillow/hopper.jpg", "embedded"),
        ("never", "pillow/hopper.gif", "error"),
        ("auto", "pillow/hopper.bmp", "sidecar"),
    ],
)
def test_sidecar_modes(tmp_path: Path, mode: str, name: str, expected: str) -> None:
    [path] = copy_corpus([name], tmp_path)
    before = path.read_bytes()
    with writer_with(sidecar=mode) as w:
        if expected == "error":
            with pytest.raises(MetadataError) as err:
                w.write(path, alt_text="a", description="d", keywords=["k"])
            assert err.value.reason == 'not written: .gif files cannot hold these tags and metadata.sidecar is "never"'
            return
        out = w.write(path, alt_text="a", description="d", keywords=["k"])
    sidecar = path.with_name(path.name + ".xmp")
    assert Path(out.target) == (sidecar if expected == "sidecar" else path)
    assert sidecar.exists() is (expected == "sidecar")
    assert (path.read_bytes() == before) is (expected == "sidecar")


def test_lightroom_style_sidecar_name_and_an_existing_sidecar_is_updated(tmp_path: Path) -> None:
    [path] = copy_corpus(["exiftool/Nikon.nef"], tmp_path)
    sidecar = tmp_path / "Nikon.xmp"
    subprocess.run(
        ["exiftool", "-o", str(sidecar), "-XMP-xmp:Rating=4", "-XMP-dc:Subject=raw", str(path)],
        check=True,
        capture_output=True,
    )
    with writer_with(sidecar_name="{stem}.xmp") as w:
        out = w.write(path, alt_text="a", description="d", keywords=["k"])
    assert out.target == str(sidecar)
    got = read_tags(sidecar, "XMP-xmp:Rating", "XMP-dc:Subject")
    assert got["XMP-xmp:Rating"] == 4 and got["XMP-dc:Subject"] == ["raw", "k"]


def test_read_only_file_gets_a_sidecar(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    path.chmod(0o444)
    before = path.read_bytes()
    if os.access(path, os.W_OK):
        pytest.skip("running as root: permission bits do not stop writes")
    out = writer.write(path, alt_text="a", description="d", keywords=[])
    assert out.target == str(path) + ".xmp" and path.read_bytes() == before


def test_unwritable_file_gets_a_sidecar_even_as_root(
    writer: MetadataWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores permission bits, and CI runs as root: deny write access the
    # way a read-only mount would, for the image only (the sidecar is real).
    import daemon.metadata.exiftool as tag

    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    before = path.read_bytes()
    real_access = os.access
    monkeypatch.setattr(tag.os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    out = writer.write(path, alt_text="a read-only photo", description="d", keywords=["k"])
    assert out.target == str(path) + ".xmp" and path.read_bytes() == before
    assert (
        read_tags(Path(out.target), "XMP-iptcCore:AltTextAccessibility")["XMP-iptcCore:AltTextAccessibility"]
        == "a read-only photo"
    )


def test_iptc_byte_limits_never_split_a_character(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    long_kw = "日本語" * 10  # 90 UTF-8 bytes; IPTC keywords hold 64
    long_desc = "Ελληνικά " * 300  # ~5,100 bytes; IPTC captions hold 2,000
    writer.write(path, alt_text="a \"quoted\" 'alt' text", description=long_desc, keywords=[long_kw])
    got = read_tags(
        path, "IPTC:Keywords", "XMP-dc:Subject", "IPTC:Caption-Abstract", "XMP-iptcCore:AltTextAccessibility"
    )
    iptc_kw = got["IPTC:Keywords"][0] if isinstance(got["IPTC:Keywords"], list) else got["IPTC:Keywords"]
    assert len(iptc_kw.encode()) <= 64 and long_kw.startswith(iptc_kw) and len(iptc_kw) == 21
    assert got["XMP-dc:Subject"] == [long_kw]
    assert len(got["IPTC:Caption-Abstract"].encode()) <= 2000 and long_desc.startswith(got["IPTC:Caption-Abstract"])
    assert got["XMP-iptcCore:AltTextAccessibility"] == "a \"quoted\" 'alt' text"


def test_read_many_reads_what_read_reads(writer: MetadataWriter, tmp_path: Path) -> None:
    names = ["exiftool/MWG.jpg", "pillow/hopper.jpg", "pillow/hopper.png", "exiftool/XMP.jpg"]
    paths = copy_corpus(names, tmp_path)
    writer.write(paths[1], alt_text="a small test image", description=NON_LATIN, keywords=["日本", "square"])
    gone = tmp_path / "gone.xmp"
    got = writer.read_many([*paths, gone])
    assert got == {**{p: writer.read(p) for p in paths}, gone: {}}
    assert got[paths[0]]["XMP-dc:Subject"] == ["RIGHT1of2-XMP-Keywords", "RIGHT2of2-XMP-Keywords"]
    assert got[paths[1]]["XMP-dc:Description"] == NON_LATIN


def test_read_many_leaves_out_what_it_could_not_read(
    writer: MetadataWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, vanishing = copy_corpus(["exiftool/MWG.jpg", "pillow/hopper.jpg"], tmp_path)
    text = tmp_path / "text.jpg"
    text.write_text("not a jpeg")
    assert writer.read_many([good, text]) == {good: writer.read(good), text: {}}  # exiftool reads it as empty
    execute = writer.exiftool.execute

    def deleted_meanwhile(path: object, args: list[str]) -> str:
        vanishing.unlink()  # after read_many saw it exist: exiftool fails the whole command
        return execute(path, args)

    monkeypatch.setattr(writer.exiftool, "execute", deleted_meanwhile)
    assert writer.read_many([good, vanishing]) == {}  # each is then read on its own, with its own error
    monkeypatch.undo()
    with pytest.raises(MetadataError):
        writer.write(text, alt_text="a", description="b", keywords=["c"], current={})


def test_a_fresh_read_is_not_needed_when_the_caller_read_the_file(writer: MetadataWriter, tmp_path: Path) -> None:
    [path] = copy_corpus(["exiftool/MWG.jpg"], tmp_path)
    current = writer.read_many([path])[path]
    out = writer.write(path, alt_text="alt", description="ours", keywords=["square"], current=current)
    assert out.before == current
    assert read_tags(path, "XMP-dc:Subject")["XMP-dc:Subject"] == [
        "RIGHT1of2-XMP-Keywords",
        "RIGHT2of2-XMP-Keywords",
        "square",
    ]
