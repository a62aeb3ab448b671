"""The shells' result icons: freedesktop thumbnails, used when fresh, made when missing or stale."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from daemon.desktop.thumbs import file_uri, thumbnail, thumbnail_path
from daemon.testing.helpers import copy_corpus


def _later() -> float:
    return time.monotonic() + 60


def test_a_thumbnail_is_made_as_the_standard_says_and_used_again(tmp_path: Path) -> None:
    [photo] = copy_corpus(["pillow/hopper_orientation_6.jpg"], tmp_path / "photos")
    made = thumbnail(str(photo), _later())
    assert made is not None and Path(made) == thumbnail_path(str(photo))
    assert Path(made).parent == Path(os.environ["XDG_CACHE_HOME"]) / "thumbnails" / "normal"
    assert (Path(made).stat().st_mode & 0o777) == 0o600
    with Image.open(made) as im:
        assert max(im.size) == 128 and im.info["Thumb::URI"] == file_uri(str(photo))
        assert im.info["Thumb::MTime"] == str(int(photo.stat().st_mtime))
    first = Path(made).stat().st_mtime_ns
    assert thumbnail(str(photo), time.monotonic() - 1) == made  # fresh: used even with no time left
    assert Path(made).stat().st_mtime_ns == first

    later = photo.stat().st_mtime + 10
    os.utime(photo, (later, later))  # the photo changed since: the thumbnail is stale
    assert thumbnail(str(photo), time.monotonic() - 1) is None  # no time left to make it again
    again = thumbnail(str(photo), _later())
    with Image.open(str(again)) as im:
        assert im.info["Thumb::MTime"] == str(int(later))


@pytest.mark.parametrize("name", ["pillow/bad/truncated_jpeg.jpg", "missing.jpg"])
def test_an_unreadable_or_missing_file_gets_no_thumbnail(tmp_path: Path, name: str) -> None:
    path = copy_corpus([name], tmp_path)[0] if "bad" in name else tmp_path / name
    assert thumbnail(str(path), _later()) is None
    assert not thumbnail_path(str(path)).exists()


def test_a_name_with_bytes_that_are_not_utf8_has_its_uri_percent_encoded(tmp_path: Path) -> None:
    path = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png")
    Image.new("RGB", (300, 200), (9, 9, 9)).save(path, "PNG")
    made = thumbnail(path, _later())
    with Image.open(str(made)) as im:
        assert im.info["Thumb::URI"].endswith("/caf%E9.png") and im.size == (128, 85)


NAMES = ["Tom's photo (1).jpg", "a [b] #c;d&e=f+g@h~i!j,k*l$m:n%o.jpg", "été à la mer.jpg"]


@pytest.mark.parametrize("name", NAMES)
def test_the_uri_and_so_the_thumbnail_name_are_what_gnome_files_uses(tmp_path: Path, name: str) -> None:
    if shutil.which("gio") is None:
        pytest.fail("gio is missing: make test-tools installs libglib2.0-bin")
    path = tmp_path / name
    path.write_bytes(b"")
    out = subprocess.run(["gio", "info", str(path)], capture_output=True, text=True, check=True).stdout
    (uri,) = [line.removeprefix("uri: ") for line in out.splitlines() if line.startswith("uri: ")]
    assert file_uri(str(path)) == uri  # GLib's own escaping: the same md5, the same thumbnail file


def test_a_large_jpeg_is_decoded_small_and_turned_by_its_orientation(tmp_path: Path) -> None:
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    Image.new("RGB", (3000, 2000), (200, 30, 30)).save(path, exif=exif.tobytes())
    with Image.open(str(thumbnail(str(path), _later()))) as im:
        assert im.size == (85, 128)  # portrait, as a viewer shows it
