"""Every format in the corpus: which fields land where, read back by exiftool *and*
by independent readers (exiv2; libheif through pillow-heif for HEIF, which
Debian's exiv2 0.27 cannot read), and the decoded pixels never change."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from daemon.errors import ImageError
from daemon.imaging import decode
from daemon.metadata import MetadataWriter
from daemon.testing.helpers import CORPUS, copy_corpus, read_tags

ALT = "Alt café – 日本語 – Ελληνικά"
DESC = "Description: a café in Tōkyō – 日本語 – Ελληνικά"
KEYWORDS = ["café", "日本語", "Ελληνικά"]

# name -> (where the tags go, IPTC-IIM written too)
MATRIX = {
    "pillow/hopper.jpg": ("embedded", True),
    "exiftool/IPTC.jpg": ("embedded", True),
    "pillow/hopper.png": ("embedded", False),
    "pillow/hopper.webp": ("embedded", False),
    "pillow/hopper.tif": ("embedded", True),
    "pillow/hopper.heif": ("embedded", False),
    "exiftool/QuickTime.heic": ("embedded", False),
    "pillow/hopper.avif": ("embedded", False),
    "pillow/hopper.gif": ("sidecar", False),
    "pillow/hopper.bmp": ("sidecar", False),
    "exiftool/Nikon.nef": ("sidecar", False),
    "exiftool/DNG.dng": ("sidecar", False),
}


@pytest.fixture(scope="module")
def writer() -> Iterator[MetadataWriter]:
    w = MetadataWriter()
    yield w
    w.close()


def exiv2_xmp(path: Path) -> dict[str, str]:
    if shutil.which("exiv2") is None:
        pytest.fail("exiv2 is missing: make test installs it (Debian package exiv2)")
    out = subprocess.run(["exiv2", "-PXkv", str(path)], capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        values[key] = re.sub(r'^lang="x-default" ', "", value.strip())
    return values


def libheif_xmp(path: Path) -> dict[str, str]:
    """XMP of a HEIF file as libheif hands it to Pillow, parsed with ElementTree."""
    import pillow_heif

    heif = pillow_heif.open_heif(path)
    xmp = heif.info.get("xmp")
    assert xmp, f"no XMP in {path}"
    ns = {
        "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
        "dc": "http://purl.org/dc/elements/1.1/",
        "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
        "lr": "http://ns.adobe.com/lightroom/1.0/",
    }
    root = ET.fromstring(xmp.decode("utf-8").strip("\x00"))

    def items(tag: str) -> list[str]:
        return [li.text or "" for el in root.iter(tag) for li in el.iter(f"{{{ns['rdf']}}}li")]

    return {
        "Xmp.iptc.AltTextAccessibility": ", ".join(items(f"{{{ns['Iptc4xmpCore']}}}AltTextAccessibility")),
        "Xmp.dc.description": ", ".join(items(f"{{{ns['dc']}}}description")),
        "Xmp.dc.subject": ", ".join(items(f"{{{ns['dc']}}}subject")),
        "Xmp.lr.hierarchicalSubject": ", ".join(items(f"{{{ns['lr']}}}hierarchicalSubject")),
    }


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_format_matrix(writer: MetadataWriter, tmp_path: Path, name: str) -> None:
    where, iptc = MATRIX[name]
    [path] = copy_corpus([name], tmp_path)
    original = path.read_bytes()
    out = writer.write(path, alt_text=ALT, description=DESC, keywords=KEYWORDS)
    target = Path(out.target)
    assert target == (path if where == "embedded" else path.with_name(path.name + ".xmp"))
    if where == "sidecar":
        assert path.read_bytes() == original

    got = read_tags(target)
    assert got["XMP-iptcCore:AltTextAccessibility"] == ALT
    if name != "exiftool/IPTC.jpg":  # IPTC.jpg has a person's caption, kept
        assert got["XMP-dc:Description"] == DESC
    assert got["XMP-dc:Subject"][-3:] == KEYWORDS
    assert set(KEYWORDS) <= set(got["XMP-lr:HierarchicalSubject"])
    assert ("IPTC:Keywords" in got) is iptc
    if iptc:
        assert got["IPTC:Keywords"][-3:] == KEYWORDS

    independent = libheif_xmp(target) if target.suffix.lower() in (".heif", ".heic") else exiv2_xmp(target)
    assert independent["Xmp.iptc.AltTextAccessibility"] == ALT
    if name != "exiftool/IPTC.jpg":
        assert independent["Xmp.dc.description"] == DESC
    assert independent["Xmp.dc.subject"].endswith(", ".join(KEYWORDS))
    for kw in KEYWORDS:
        assert kw in independent["Xmp.lr.hierarchicalSubject"]
    if iptc and target.suffix.lower() in (".jpg", ".jpeg"):
        iim = subprocess.run(["exiv2", "-PIkv", str(target)], capture_output=True, text=True).stdout
        for kw in KEYWORDS:
            assert re.search(rf"^Iptc\.Application2\.Keywords\s+{re.escape(kw)}$", iim, re.M), kw


def _corpus_images() -> list[str]:
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md")


@pytest.mark.parametrize("name", _corpus_images())
def test_pixels_never_change(writer: MetadataWriter, tmp_path: Path, name: str) -> None:
    [path] = copy_corpus([name], tmp_path)
    try:
        before = decode(path)
    except ImageError:
        before = None
    try:
        writer.write(path, alt_text=ALT, description=DESC, keywords=KEYWORDS)
    except Exception as exc:  # noqa: BLE001 - a file exiftool refuses must stay as it was
        assert path.read_bytes() == (CORPUS / name).read_bytes(), exc
        return
    if before is None:
        with pytest.raises(ImageError):
            decode(path)
        return
    after = decode(path)
    assert hashlib.sha256(after.image.tobytes()).digest() == hashlib.sha256(before.image.tobytes()).digest()
    with Image.open(path) as im:  # the raw pixels too, before any EXIF rotation
        with Image.open(CORPUS / name) as orig:
            assert im.size == orig.size and im.mode == orig.mode
