"""The files that tell the session bus, GNOME Shell and KRunner about the provider.

All at user level, under ``$XDG_DATA_HOME`` (``~/.local/share``):

- ``dbus-1/services/<bus name>.service``: the bus starts ``search-provider``
  the first time a shell calls it (D-Bus activation);
- ``applications/<app id>.desktop``: the application GNOME Shell shows the
  results under (it opens the web page);
- ``krunner/dbusplugins/<app id>.desktop``: KRunner's plugin entry;
- ``gnome-shell/search-providers/<app id>.search-provider.ini``: GNOME
  Shell's key file. GNOME Shell reads these only from the system data
  directories (``$XDG_DATA_DIRS``), never from the user's, so ``install``
  says the one command that copies it there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import xdg_home
from daemon.errors import FlorenceWatchError
from daemon.files import is_utf8

if TYPE_CHECKING:  # doctor's module pulls in watchdog: the provider, which imports this file, needs none of it
    from daemon.service.doctor import Check

APP_ID = "io.github.FlorenceWatch"
BUS_NAME = f"{APP_ID}.SearchProvider"
GNOME_PATH = "/io/github/FlorenceWatch/SearchProvider"
KRUNNER_PATH = "/io/github/FlorenceWatch/KRunner"
SYSTEM_DIR = Path("/usr/local/share")  # in every distribution's default XDG_DATA_DIRS, and the admin's own
DEFAULT_DATA_DIRS = "/usr/local/share:/usr/share"  # the XDG spec's, when $XDG_DATA_DIRS is unset
GNOME_KEY_FILE = f"gnome-shell/search-providers/{APP_ID}.search-provider.ini"


@dataclass(frozen=True)
class Piece:
    """One installed file: what it is for, where it goes under the data folder, and its text."""

    name: str
    relative: str
    text: str


def pieces(argv: list[str]) -> list[Piece]:
    """The four files for a provider started as *argv* (this installation, with its --config)."""
    return [
        Piece("D-Bus service", f"dbus-1/services/{BUS_NAME}.service", _dbus_service(argv)),
        Piece("desktop entry", f"applications/{APP_ID}.desktop", _desktop_entry(argv)),
        Piece("KRunner plugin", f"krunner/dbusplugins/{APP_ID}.desktop", KRUNNER_ENTRY),
        Piece("GNOME key file", GNOME_KEY_FILE, GNOME_KEYS),
    ]


def _dbus_service(argv: list[str]) -> str:
    # The bus reads the file's backslash escapes first (a lone one makes it skip the whole file,
    # silently), then splits Exec as a shell would, quotes and all, and expands nothing.
    command = shlex.join([*argv, "search-provider"]).replace("\\", "\\\\")
    return f"[D-BUS Service]\nName={BUS_NAME}\nExec={command}\n"


def _desktop_entry(argv: list[str]) -> str:
    # No NoDisplay, Hidden or OnlyShowIn: GNOME Shell drops the provider of an app that should_show() hides.
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=florence-watch\n"
        "GenericName=Photo search\n"
        "Comment=Find your photos by what is in them: captions, text and objects\n"
        f"Exec={desktop_exec([*argv, 'open'])}\n"
        "Icon=image-x-generic\n"
        "Terminal=false\n"
        "Categories=Graphics;Photography;\n"
        "Keywords=photo;image;search;caption;\n"
    )


KRUNNER_ENTRY = f"""\
[Desktop Entry]
Name=florence-watch
Comment=Photos found by what is in them
Icon=image-x-generic
Type=Service
X-KDE-ServiceTypes=Plasma/Runner
X-KDE-PluginInfo-Name={APP_ID}
X-KDE-PluginInfo-EnabledByDefault=true
X-Plasma-API=DBus
X-Plasma-Runner-Min-Letter-Count=2
X-Plasma-DBusRunner-Service={BUS_NAME}
X-Plasma-DBusRunner-Path={KRUNNER_PATH}
"""

GNOME_KEYS = f"""\
[Shell Search Provider]
DesktopId={APP_ID}.desktop
BusName={BUS_NAME}
ObjectPath={GNOME_PATH}
Version=2
"""

_RESERVED = re.compile(r"""[\s"'\\><~|&;$*?#()`]""")


def desktop_exec(argv: list[str]) -> str:
    """*argv* as a desktop entry's Exec value: quoted where the spec asks, then escaped as a string."""
    words = []
    for arg in argv:
        arg = arg.replace("%", "%%")  # a field code otherwise
        if _RESERVED.search(arg) or not arg:
            arg = '"' + re.sub(r'(["`$\\])', r"\\\1", arg) + '"'
        words.append(arg)
    return " ".join(words).replace("\\", "\\\\")  # the string escape of every desktop entry value


def install(argv: list[str], data_home: Path | None = None) -> tuple[list[Path], list[str]]:
    """Write the four files; returns their paths and what is left for the person to run."""
    data_home = data_home or xdg_home("DATA")
    for arg in argv:  # neither file format can carry a line break, nor bytes that are not UTF-8
        if any(unicodedata.category(c) == "Cc" for c in arg) or not is_utf8(arg):
            raise FlorenceWatchError(f"cannot write the desktop files: {arg!r} holds a control character or non-UTF-8")
    written = []
    for piece in pieces(argv):
        path = data_home / piece.relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(piece.text, encoding="utf-8")
        written.append(path)
    todo = []
    if _system_key_file() is None:
        todo.append(
            "GNOME Shell reads search providers only from the system data folders ($XDG_DATA_DIRS), so copy "
            f"its key file there once: {copy_command(data_home)}"
        )
    todo += [
        "GNOME Shell: log out and back in; then Settings > Search lists florence-watch",
        "KRunner: kquitapp6 krunner (kquitapp5 on Plasma 5); it starts again at the next Alt+Space",
    ]
    return written, todo


def remove(data_home: Path | None = None) -> tuple[list[Path], list[str]]:
    """Delete the four files; returns those deleted and the command for a system copy, if one is there."""
    data_home = data_home or xdg_home("DATA")
    removed = []
    for piece in pieces([]):
        path = data_home / piece.relative
        if path.exists():
            path.unlink()
            removed.append(path)
    system = _system_key_file()
    todo = [f"sudo rm {shlex.quote(str(system))}   # GNOME Shell's copy of the key file"] if system else []
    todo.append("KRunner: kquitapp6 krunner (kquitapp5 on Plasma 5) to forget the plugin now")
    return removed, todo


def copy_command(data_home: Path) -> str:
    """The one command that puts our key file where GNOME Shell reads it, quoted for a shell."""
    dirs = list(_system_dirs())
    target = SYSTEM_DIR if SYSTEM_DIR in dirs or not dirs else dirs[0]
    source, dest = data_home / GNOME_KEY_FILE, target / GNOME_KEY_FILE
    return f"sudo install -D -m 644 {shlex.quote(str(source))} {shlex.quote(str(dest))}"


def _gnome_session() -> bool:
    """Whether GNOME Shell is this desktop (or installed): elsewhere its key file is nobody's business."""
    return "GNOME" in os.environ.get("XDG_CURRENT_DESKTOP", "").upper().split(":") or bool(shutil.which("gnome-shell"))


def _system_key_file() -> Path | None:
    """The key file where GNOME Shell reads it, if a copy is there."""
    for folder in _system_dirs():
        path = folder / GNOME_KEY_FILE
        if path.is_file():
            return path
    return None


def _system_dirs() -> Iterator[Path]:
    for entry in (os.environ.get("XDG_DATA_DIRS") or DEFAULT_DATA_DIRS).split(":"):
        if entry:
            yield Path(entry)


def checks(argv: list[str], data_home: Path | None = None) -> list[Check]:
    """``doctor``'s findings, one per piece; a single note when none is installed."""
    from daemon.service.doctor import fail, note, ok

    data_home = data_home or xdg_home("DATA")
    found = [(p, data_home / p.relative) for p in pieces(argv)]
    try:
        installed = any(path.exists() for _, path in found)
    except OSError as exc:  # $HOME is another user's (sudo without -H)
        return [note("desktop search", f"cannot look in {data_home}: {exc.strerror or exc}")]
    if not installed:
        return [note("desktop search", "not installed", "florence-watch install-service --desktop")]
    out = []
    for piece, path in found:
        out.append(_check_piece(piece, path))
    system = _system_key_file()
    if system is None:
        missing = "GNOME Shell reads key files only from $XDG_DATA_DIRS, and none holds ours"
        report = fail if _gnome_session() else note  # on KDE, say it without failing the doctor
        out.append(report("GNOME provider", missing, copy_command(data_home)))
    elif system.read_text(encoding="utf-8", errors="replace") != GNOME_KEYS:
        out.append(
            fail(
                "GNOME provider",
                f"{system} differs from ours",
                f"sudo rm {shlex.quote(str(system))}; then as install says",
            )
        )
    else:
        out.append(ok("GNOME provider", f"GNOME Shell reads {system}"))
    return out


def _check_piece(piece: Piece, path: Path) -> Check:
    from daemon.service.doctor import fail, ok

    again = "florence-watch install-service --desktop"
    if not path.is_file():
        return fail(piece.name, f"{path} is missing", again)
    if path.read_text(encoding="utf-8", errors="replace") != piece.text:
        return fail(piece.name, f"{path} is not this installation's (another --config or a moved checkout)", again)
    return ok(piece.name, str(path))
