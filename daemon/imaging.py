"""Reading images from disk: which files count, hashing, fingerprints, decoding.

Decoding is complete (every pixel is read) so a truncated or half-copied file
fails here with a reason, never later in the model. Files are only read: the
rotation from EXIF orientation is applied to the in-memory copy the model sees.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from daemon.errors import ImageError
from daemon.files import is_raw

try:  # HEIC/HEIF (iPhone photos); Pillow reads AVIF itself
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a dependency; tolerate its absence
    pass

# Refuse decompression bombs outright rather than warn: a 30000x30000 PNG
# would take gigabytes. 100 megapixels covers any camera sold today.
MAX_PIXELS = 100_000_000

# MAX_PIXELS is checked per image, from its header (_check_size), so decoding
# threads share no state. Pillow's own guard cannot be set per call: Image.open
# (and the GIF, MPO and TIFF plugins) read the process-wide
# Image.MAX_IMAGE_PIXELS (about 89.5 MP), warn above it and raise
# DecompressionBombError above twice it. So an image over 89.5 MP also gets a
# DecompressionBombWarning from Pillow (shown once per size by the default
# filters), and up to 100 MP still decodes. Silencing it here would take a
# process-wide filter, which an enclosing warnings.catch_warnings() discards
# (pytest's collection does); warning filters are the application's to set.


@dataclass(frozen=True)
class Fingerprint:
    """What stat says of a file: unchanged inode, size and mtime mean unchanged content."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> Fingerprint:
        """The fingerprint of *path* now."""
        st = os.stat(path)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def stat(self) -> tuple[int, int, int]:
        """(inode, size, mtime_ns), as the index stores them."""
        return (self.inode, self.size, self.mtime_ns)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of *path*'s bytes, in hex; ImageError if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise read_error(path, exc) from None
    return h.hexdigest()


def content_key(image: Image.Image) -> str:
    """A hash of the decoded pixels as the model sees them (orientation applied).

    An edit that touches only metadata keeps it; any change to the pixels,
    the size or the orientation changes it.
    """
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def read_error(path: str | Path, exc: OSError) -> ImageError:
    """Why a file could not be read, in words a person can act on."""
    if isinstance(exc, FileNotFoundError):
        return ImageError(path, "the file disappeared before it could be read")
    if isinstance(exc, PermissionError):
        return ImageError(path, "permission denied: the daemon's user cannot read this file")
    if isinstance(exc, IsADirectoryError):
        return ImageError(path, "is a folder, not a file")
    return ImageError(path, f"cannot read: {exc.strerror or exc}")


@dataclass
class Decoded:
    """An image ready for the model, plus what the index records of it."""

    path: str
    image: Image.Image  # RGB, orientation applied
    width: int  # as displayed (after EXIF orientation)
    height: int
    format: str


def decode(path: str | Path) -> Decoded:
    """Fully decode *path* to RGB, or raise ImageError naming the reason."""
    path = str(path)
    if is_raw(path):
        return _decode_raw(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise read_error(path, exc) from None
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    return _decode_bytes(path, data)


def _decode_bytes(path: str, data: bytes, fmt: str | None = None) -> Decoded:
    """Decode *data*, the bytes of *path*, to RGB with EXIF orientation applied."""
    try:
        with Image.open(BytesIO(data)) as im:  # lazy: reads the header, no pixels yet
            fmt = fmt or im.format or "unknown"
            im.seek(0)  # first frame of GIF/MPO/multi-page TIFF (a GIF frame may enlarge the canvas)
            _check_size(path, im.size)
            im.load()
            rgb = ImageOps.exif_transpose(im.convert("RGB") if im.mode != "RGB" else im.copy())
    # Pillow's error (over twice its own limit) comes from Image.open, before _check_size sees the
    # size; its warning is raised only where the program has turned warnings into errors.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"refused: image too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(path, f"not an image Pillow can read ({_sniff(data)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"corrupt or truncated image: {exc}") from None
    if rgb.width < 2 or rgb.height < 2:
        raise ImageError(path, f"image is only {rgb.width}x{rgb.height} pixels: too small to describe")
    return Decoded(path=path, image=rgb, width=rgb.width, height=rgb.height, format=fmt)


def _check_size(path: str, size: tuple[int, int]) -> None:
    """Refuse an image whose header declares more than MAX_PIXELS, before any pixel is decoded."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            path,
            f"refused: image too large to decode safely ({width}x{height} = "
            f"{width * height:,} pixels, over the limit of {MAX_PIXELS:,})",
        )


def _sniff(data: bytes) -> str:
    """A guess at what *data* is, for the "not an image" reason."""
    head = data[:8]
    if head.startswith(b"%PDF"):
        return "looks like a PDF"
    try:
        sample = data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return "unknown format"
    return "looks like a text file" if sample.isprintable() or "\n" in sample else "unknown format"


def _decode_raw(path: str) -> Decoded:
    """RAW files: describe the camera's embedded JPEG preview (exiftool extracts it)."""
    for tag in ("-JpgFromRaw", "-PreviewImage", "-OtherImage", "-ThumbnailImage"):
        try:
            out = subprocess.run(
                ["exiftool", "-b", tag, "--", path], capture_output=True, timeout=60, check=False
            ).stdout
        except FileNotFoundError:
            raise ImageError(path, "exiftool is not installed (needed to read RAW previews)") from None
        except subprocess.TimeoutExpired:
            raise ImageError(path, "exiftool timed out reading the RAW preview") from None
        if len(out) > 1024:
            try:
                return _decode_bytes(path, out, fmt="RAW")
            except ImageError:
                continue
    raise ImageError(path, "RAW file without an embedded preview image large enough to describe")
