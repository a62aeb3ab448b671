"""Which files count: the format table, candidate names, and "is this under that folder".

One place for rules that several stages need: the watcher and the pipeline
decide what to look at, decoding treats RAW files apart, the metadata side
decides file or sidecar, and the index, search, export and retag all limit
themselves to a folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the desktop provider reads this module and needs no SQLAlchemy
    from sqlalchemy import ColumnElement

# RAW files: the photographer's negatives. Decoded from their embedded
# preview, and never written to (a sidecar holds our tags).
RAW_EXTENSIONS = frozenset(
    {
        ".nef",
        ".nrw",
        ".cr2",
        ".cr3",
        ".crw",
        ".dng",
        ".arw",
        ".srf",
        ".sr2",
        ".orf",
        ".rw2",
        ".raf",
        ".pef",
        ".srw",
        ".x3f",
        ".3fr",
        ".iiq",
        ".erf",
        ".kdc",
        ".mrw",
    }
)
IMAGE_EXTENSIONS = (
    frozenset(
        {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".gif", ".bmp", ".mpo"}
    )
    | RAW_EXTENSIONS
)
# Documents, each page described as an image (daemon/pdf.py): what a scanner's "scan to folder" writes.
DOCUMENT_EXTENSIONS = frozenset({".pdf"})
# Formats whose files cannot (or should not) hold the tags: RAW files, and
# GIF and BMP, which have no room for XMP that apps read.
SIDECAR_ONLY_EXTENSIONS = RAW_EXTENSIONS | {".gif", ".bmp"}
IIM_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".tif", ".tiff"})  # IPTC-IIM is only read there
EXIF_EXTENSIONS = IIM_EXTENSIONS | {".png", ".webp", ".heic", ".heif", ".avif", ".mpo"}

# Names that are never images of their own: partial downloads, editor and
# exiftool temp files, sidecars, exiftool backups.
_IGNORED_SUFFIXES = (".part", ".crdownload", ".partial", ".tmp", ".download", ".xmp", "_exiftool_tmp", "_original")

log = logging.getLogger(__name__)


def extension(path: str | Path) -> str:
    """The lower-case extension with its dot (``.jpg``)."""
    return os.path.splitext(str(path).lower())[1]


def is_raw(path: str | Path) -> bool:
    return extension(path) in RAW_EXTENSIONS


def is_candidate(path: str | Path) -> bool:
    """True for a file name the daemon should look at (not whether it decodes)."""
    name = os.path.basename(str(path))
    if not name or name.startswith("."):
        return False
    if name.lower().endswith(_IGNORED_SUFFIXES):
        return False
    return extension(name) in IMAGE_EXTENSIONS or extension(name) in DOCUMENT_EXTENSIONS


_UNNAMEABLE: set[str] = set()  # paths already reported, so a folder rescanned does not repeat itself


def is_utf8(text: str) -> bool:
    """Whether *text* is UTF-8 through and through: a file name in another encoding reaches Python with
    its undecodable bytes as surrogates, which neither the index nor a desktop file can hold."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown(path: str) -> str:
    """*path* for a log line or a shell: bytes that are not UTF-8 as U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def storable(path: str) -> bool:
    """Whether the index can hold *path*: both SQLite and PostgreSQL keep text as UTF-8, and a name in
    another encoding (Latin-1 from an old camera card or a Windows share) cannot be. Such a file is
    left alone, reported once with the fix."""
    if is_utf8(path):
        return True
    if path not in _UNNAMEABLE:
        _UNNAMEABLE.add(path)
        log.error(
            "skipped %s: its name is not UTF-8, which the index cannot hold; rename it "
            "(convmv -f latin1 -t utf8 --notest FILE renames from Latin-1)",
            shown(path),
        )
    return False


def is_sidecar(path: str | Path) -> bool:
    """An XMP sidecar (``photo.jpg.xmp`` or ``photo.xmp``) that a person's photo tool may edit."""
    name = os.path.basename(str(path))
    return bool(name) and not name.startswith(".") and name.lower().endswith(".xmp")


# Names another program's save leaves beside a file while it writes it: exiftool's
# temp file, editors' backups and temp copies.
_WRITING = ("{}_exiftool_tmp", "{}.tmp", "{}~", "{}.swp", ".{}.swp", "{}.part", "{}.partial")
_TEMP_ENDINGS = ("_exiftool_tmp", ".tmp", "~", ".swp", ".part", ".partial")  # what every name above ends with


class TempFiles:
    """Other programs' temp files, listed once per folder: a group of writes shares the listing."""

    def __init__(self) -> None:
        self._by_folder: dict[str, set[str]] = {}

    def beside(self, path: str | Path) -> str | None:
        """The name of another program's temp file beside *path* while it saves it, if there is one."""
        folder, name = os.path.split(str(path))
        if folder not in self._by_folder:
            try:
                self._by_folder[folder] = {n for n in os.listdir(folder or ".") if n.endswith(_TEMP_ENDINGS)}
            except OSError:
                self._by_folder[folder] = set()
        return next((p.format(name) for p in _WRITING if p.format(name) in self._by_folder[folder]), None)


def is_ignored_path(path: str | Path, roots: list[Path]) -> bool:
    """True if any folder between a watched root and *path* is hidden (.git, .thumbnails, ...)."""
    p = Path(path)
    for root in roots:
        try:
            rel = p.relative_to(root)
        except ValueError:
            continue
        return any(part.startswith(".") for part in rel.parts[:-1])
    return False


def folder_prefix(folder: str | Path) -> tuple[str, str]:
    """A folder as a path without a trailing slash, and the prefix every path below it starts with."""
    folder = str(folder).rstrip("/") or "/"
    return folder, folder.rstrip("/") + "/"


def is_under(path: str | Path, folder: str | Path) -> bool:
    """True if *path* is *folder* or lies below it (by name: ``/a/bc`` is not under ``/a/b``)."""
    folder, prefix = folder_prefix(folder)
    path = str(path)
    return path == folder or path.startswith(prefix)


def under(column: Any, folder: str | Path) -> ColumnElement[bool]:
    """SQL for :func:`is_under`: *column* (a path column) is *folder* or below it."""
    folder, prefix = folder_prefix(folder)
    from sqlalchemy import or_

    return or_(column == folder, column.startswith(prefix, autoescape=True))


ROOM_SLACK = 256 * 1024  # exiftool writes a whole new copy beside the file, plus its new metadata


def no_room(path: str | Path) -> str:
    """Why a new copy of *path* cannot be written beside it now ('' if it can): a full or read-only disk.

    Both pass by themselves (space freed, the share remounted read-write): the write waits for them.
    """
    try:
        need = os.stat(path).st_size + ROOM_SLACK
        fs = os.statvfs(Path(path).parent)
    except OSError:
        return ""
    if fs.f_flag & os.ST_RDONLY:
        return "its filesystem is read-only"
    free = fs.f_bavail * fs.f_frsize
    if free < need:
        return f"no space left on its disk ({free // 1024} KiB free, {need // 1024} KiB needed)"
    return ""
