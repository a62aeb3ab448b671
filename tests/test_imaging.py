from __future__ import annotations

import hashlib
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from daemon import imaging
from daemon.errors import ImageError
from daemon.files import is_candidate, is_ignored_path
from daemon.imaging import MAX_PIXELS, Decoded, Fingerprint, decode, sha256_file
from daemon.testing.helpers import write_png

GOOD = [
    "pillow/hopper.jpg",
    "pillow/hopper.png",
    "pillow/hopper.webp",
    "pillow/hopper.tif",
    "pillow/hopper.gif",
    "pillow/hopper.bmp",
    "pillow/hopper.avif",
    "pillow/hopper.heif",
    "pillow/frozenpond.mpo",
    "pillow/16bit.cropped.tif",
    "pillow/i_trns.png",
    "pillow/hopper_gray.jpg",
    "pillow/bad/hopper_bad_exif.jpg",
    "exiftool/ExifTool.tif",
    "exiftool/IPTC.jpg",
    "exiftool/PNG.png",
]


@pytest.mark.parametrize("name", GOOD)
def test_decodes_real_files_to_rgb(corpus: Path, name: str) -> None:
    d = decode(corpus / name)
    assert d.image.mode == "RGB"
    assert (d.width, d.height) == d.image.size and d.width >= 2


RED = (255, 0, 0)


@pytest.mark.parametrize(
    ("orientation", "red_corner"),
    [(6, (29, 0)), (8, (0, 59))],  # 6: turn 90° clockwise to display; 8: 90° anticlockwise
)
def test_exif_orientation_is_applied_in_memory_only(
    tmp_path: Path, orientation: int, red_corner: tuple[int, int]
) -> None:
    # Stored 60 wide and 30 high, white with a red top-left corner: displayed 30 wide and 60 high.
    stored = Image.new("RGB", (60, 30), "white")
    stored.paste(RED, (0, 0, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path = tmp_path / f"orientation_{orientation}.jpg"
    stored.save(path, quality=95, exif=exif)
    before = sha256_file(path)
    d = decode(path)
    assert (d.width, d.height) == d.image.size == (30, 60)
    corners = {(0, 0), (29, 0), (0, 59), (29, 59)}
    for corner in corners:
        r, g, b = d.image.getpixel(corner)  # type: ignore[misc]
        is_red = r > 200 and g < 60 and b < 60
        assert is_red is (corner == red_corner), (corner, (r, g, b))
    assert sha256_file(path) == before  # the file itself is not rotated


# Pillow warns above its own limit (about 89.5 MP): the images these tests decode or refuse are above it.
pillow_warns = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pillow_warns
def test_just_over_the_pixel_limit_is_refused_from_the_header(tmp_path: Path) -> None:
    assert 10_001 * 10_000 > MAX_PIXELS  # under Pillow's error (about 179 MP): the refusal is ours
    with pytest.raises(ImageError) as err:
        decode(write_png(tmp_path / "big.png", 10_001, 10_000))
    assert err.value.reason == (
        "refused: image too large to decode safely (10001x10000 = 100,010,000 pixels, over the limit of 100,000,000)"
    )


def test_the_pixel_limit_itself_is_allowed(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = corpus / "pillow/hopper.png"  # 128x128
    monkeypatch.setattr(imaging, "MAX_PIXELS", 128 * 128)
    assert decode(path).image.size == (128, 128)
    monkeypatch.setattr(imaging, "MAX_PIXELS", 128 * 128 - 1)
    with pytest.raises(ImageError, match=r"\(128x128 = 16,384 pixels, over the limit of 16,383\)"):
        decode(path)


@pillow_warns
def test_between_pillows_warning_and_our_limit_still_decodes(tmp_path: Path) -> None:
    # 95 MP: over Pillow's default Image.MAX_IMAGE_PIXELS (about 89.5 MP), under MAX_PIXELS.
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 9_500 * 10_000 <= MAX_PIXELS
    d = decode(write_png(tmp_path / "large.png", 9_500, 10_000, complete=True))
    assert (d.width, d.height) == d.image.size == (9_500, 10_000)


def test_decoding_in_many_threads_leaves_pillow_and_warnings_alone(corpus: Path, tmp_path: Path) -> None:
    """Decoding shares no state between threads: Pillow's global limit and the warning filters stay put."""
    normal = [
        corpus / name
        for name in (
            "pillow/hopper.jpg",
            "pillow/hopper.png",
            "pillow/hopper.webp",
            "pillow/hopper.gif",
            "pillow/hopper.tif",
            "pillow/frozenpond.mpo",
        )
    ]
    bomb = write_png(tmp_path / "bomb.png", 30_000, 30_000)
    sizes = {path: decode(path).image.size for path in normal}  # decoded one at a time
    limit, filters = Image.MAX_IMAGE_PIXELS, warnings.filters
    seen: set[tuple[int | None, bool]] = set()
    done = threading.Event()

    def watch() -> None:  # samples the shared state while the decoders run
        while not done.is_set():
            seen.add((Image.MAX_IMAGE_PIXELS, warnings.filters is filters))

    def attempt(path: Path) -> Decoded | ImageError:
        try:
            return decode(path)
        except ImageError as exc:
            return exc

    watcher = threading.Thread(target=watch, name="watch-pillow-state")
    watcher.start()
    try:
        jobs = [*normal, bomb] * 8
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(attempt, jobs))
    finally:
        done.set()
        watcher.join()
    for path, result in zip(jobs, results, strict=True):
        if path == bomb:
            assert isinstance(result, ImageError)
            assert result.reason.startswith("refused: image too large to decode safely"), result.reason
        else:
            assert isinstance(result, Decoded), result
            assert result.image.size == sizes[path]
    assert seen == {(limit, True)}
    assert (Image.MAX_IMAGE_PIXELS, warnings.filters) == (limit, filters)


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
        ("a.jpg", True),
        ("A.JPEG", True),
        ("x.heic", True),
        ("r.NEF", True),
        ("p.png", True),
        (".hidden.jpg", False),
        ("a.jpg.part", False),
        ("a.jpg.crdownload", False),
        ("a.jpg_exiftool_tmp", False),
        ("a.jpg_original", False),
        ("a.xmp", False),
        ("a.jpg.xmp", False),
        ("notes.txt", False),
        ("noext", False),
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
        "permission denied: the daemon's user cannot read this file"
    )
    assert read_error("/p", IsADirectoryError(21, "Is a directory")).reason == "is a folder, not a file"
    assert read_error("/p", OSError(5, "Input/output error")).reason == "cannot read: Input/output error"
