"""Thumbnails for the shells' result icons, in the freedesktop cache every file manager shares.

``$XDG_CACHE_HOME/thumbnails/normal/<md5 of the file's URI>.png``, 128 px,
with the ``Thumb::URI`` and ``Thumb::MTime`` the Thumbnail Managing Standard
asks for: one that GNOME Files or Dolphin made is used as it is, and one made
here serves them too. A stale one (the file changed since) is made again.
Making costs a decode, so a call gets a time budget; past it, the shell gets
the generic image icon and the thumbnail is made the next time it is asked.
A JPEG is decoded at a fraction of its size; a file that will not decode is
not tried again while this process runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes

from daemon.config import xdg_home
from daemon.files import shown

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

NORMAL_PX = 128


# What GLib leaves unescaped in a file URI (g_filename_to_uri): the name must be GNOME Files' own.
_URI_SAFE = "/!$&'()*+,=:@~"
_FAILED: set[tuple[str, int]] = set()  # (path, mtime) that would not decode: not tried again this run


def file_uri(path: str) -> str:
    """*path* as the file URI GLib writes (bytes that are not UTF-8 percent-encoded as they are)."""
    return "file://" + quote_from_bytes(os.fsencode(os.path.abspath(path)), safe=_URI_SAFE)


def thumbnail_path(path: str) -> Path:
    """Where the standard puts *path*'s normal-size thumbnail (its name: the md5 of the file URI)."""
    name = hashlib.md5(file_uri(path).encode()).hexdigest()
    return xdg_home("CACHE") / "thumbnails" / "normal" / f"{name}.png"


def thumbnail(path: str, deadline: float) -> str | None:
    """A fresh thumbnail of *path*, made now if there is none and time.monotonic() is before *deadline*."""
    target = thumbnail_path(path)
    try:
        mtime = int(os.stat(path).st_mtime)
    except OSError:
        return None
    if _fresh(target, mtime):
        return str(target)
    if time.monotonic() >= deadline or (path, mtime) in _FAILED:
        return None
    try:
        _make(path, target, mtime)
    except Exception as exc:  # noqa: BLE001 -- any unreadable image: the generic icon, never a failed search
        _FAILED.add((path, mtime))
        log.info("no thumbnail for %s: %s", shown(path), exc)
        return None
    return str(target)


def _fresh(target: Path, mtime: int) -> bool:
    from PIL import Image

    try:
        with Image.open(target) as im:
            return str(im.info.get("Thumb::MTime")) == str(mtime)
    except (OSError, ValueError):
        return False


def _small(path: str) -> Image.Image:
    """A JPEG decoded at a fraction of its size (libjpeg scales by 1/2 to 1/8 as it decodes): a 40-MP
    photo costs what a 1-MP one does. Orientation applied, as decode applies it."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (2 * NORMAL_PX, 2 * NORMAL_PX))
        return ImageOps.exif_transpose(im.convert("RGB"))


def _make(path: str, target: Path, mtime: int) -> None:
    from PIL.PngImagePlugin import PngInfo

    from daemon import pdf
    from daemon.imaging import decode

    if pdf.is_pdf(path):
        pic = pdf.first_page(path, dpi=72)  # a page at screen size is plenty for a 128-px icon
    else:
        pic = _small(path) if path.lower().endswith((".jpg", ".jpeg")) else decode(path).image
    pic.thumbnail((NORMAL_PX, NORMAL_PX))
    info = PngInfo()
    info.add_text("Thumb::URI", file_uri(path))
    info.add_text("Thumb::MTime", str(mtime))
    info.add_text("Software", "florence-watch")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".png")  # 0600, as the standard asks
    try:
        with os.fdopen(fd, "wb") as out:
            pic.save(out, "PNG", pnginfo=info)
        os.replace(tmp, target)  # whole or not at all: a file manager may read it at once
    except BaseException:
        os.unlink(tmp)
        raise
