from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from daemon.errors import ImageError
from daemon.files import is_candidate, is_ignored_path
from daemon.imaging import Fingerprint, decode, sha256_file

GOOD = [
    "pillow/hopper.jpg", "pillow/hopper.png", "pillow/hopper.webp", "pillow/hopper.tif", "pillow/hopper.gif",
    "pillow/hopper.bmp", "pillow/hopper.avif", "pillow/hopper.heif", "pillow/frozenpond.mpo",
    "pillow/16bit.cropped.tif", "pillow/i_trns.png", "pillow/hopper_gray.jpg", "pillow/bad/hopper_bad_exif.jpg",
    "exiftool/ExifTool.tif", "exiftool/IPTC.jpg", "exiftool/PNG.png",
]


@pytest.mark.parametrize("name", GOOD)
def test_decodes_real_files_to_rgb(corpus: Path, name: str) -> None:
    d = decode(corpus / name)
    assert d.image.mode == "RGB"
    assert (d.width, d.height) == d.image.size and d.width >= 2


def test_exif_orientation_is_applied_in_memory_only(corpus: Path) -> None:
    path = corpus / "pillow/hopper_orientation_6.jpg"
    before = sha256_file(path)
    with Image.open(path) as raw:
        raw_size = raw.size
    d = decode(path)
    assert d.image.size == (raw_size[1], raw_size[0]) or raw_size[0] == raw_size[1]
    assert sha256_file(path) == before


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("pillow/bad/truncated_jpeg.jpg", "corrupt or truncated image: image file is truncated"),
        ("pillow/bad/broken.png", "not an image Pillow can read"),
        ("pillow/bad/decompression_bomb.gif", "refused: image too large to decode safely"),
        ("exiftool/Nikon.nef", "RAW file without an embedded preview image large enough to describe"),
        ("exiftool/RIFF.webp", "image is only 1x1 pixels: too small to describe"),
    ],
)
def test_bad_files_fail_with_a_reason(corpus: Path, name: str, reason: str) -> None:
    with pytest.raises(ImageError) as err:
        decode(corpus / name)
    assert err.value.path == str(corpus / name)
    assert err.value.reason.startswith(reason)


def test_not_images_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello world\n")
    (tmp_path / "doc.jpg").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    expected = {
        "empty.jpg": "empty file (0 bytes)",
        "text.jpg": "not an image Pillow can read (looks like a text file)",
        "doc.jpg": "not an image Pillow can read (looks like a PDF)",
    }
    for name, reason in expected.items():
        with pytest.raises(ImageError) as err:
            decode(tmp_path / name)
        assert str(err.value) == f"{tmp_path / name}: {reason}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="disappeared"):
        decode(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="disappeared"):
        sha256_file(tmp_path / "gone.jpg")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True), ("A.JPEG", True), ("x.heic", True), ("r.NEF", True), ("p.png", True),
        (".hidden.jpg", False), ("a.jpg.part", False), ("a.jpg.crdownload", False), ("a.jpg_exiftool_tmp", False),
        ("a.jpg_original", False), ("a.xmp", False), ("a.jpg.xmp", False), ("notes.txt", False), ("noext", False),
    ],
)
def test_candidate_names(name: str, expected: bool) -> None:
    assert is_candidate(f"/x/{name}") is expected


def test_hidden_folders_are_ignored(tmp_path: Path) -> None:
    assert is_ignored_path(tmp_path / ".thumbnails" / "a.jpg", [tmp_path])
    assert not is_ignored_path(tmp_path / "2024" / "a.jpg", [tmp_path])


def test_hash_and_fingerprint(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert sha256_file(p) == hashlib.sha256(b"abc").hexdigest()
    fp = Fingerprint.of(p)
    assert fp.size == 3 and fp == Fingerprint.of(p)


def test_read_errors_in_words() -> None:
    from daemon.imaging import read_error

    assert read_error("/p", PermissionError(13, "Permission denied")).reason == (
        "permission denied: the daemon's user cannot read this file")
    assert read_error("/p", IsADirectoryError(21, "Is a directory")).reason == "is a folder, not a file"
    assert read_error("/p", OSError(5, "Input/output error")).reason == "cannot read: Input/output error"
