"""The exiftool side: long-lived processes, reading and writing our fields, file or sidecar.

exiftool runs in ``-stay_open`` mode (pyexiftool), one request at a time
per process; several processes let several threads write at once. Reads of
many files go in one command (about half the cost per file); each write is
one command for one file, so each file gets its own error.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
from pathlib import Path
from typing import Any

from daemon import pdf
from daemon.config import MetadataConfig
from daemon.errors import MetadataError
from daemon.files import SIDECAR_ONLY_EXTENSIONS, extension
from daemon.metadata.plan import LIST_KEYS, READ_KEYS, Decisions, Outcome, Target, Wanted, plan

log = logging.getLogger(__name__)

INSTALL_ADVICE = (
    "exiftool is not installed: install Debian's libimage-exiftool-perl "
    "(sudo apt-get install libimage-exiftool-perl) or set metadata.write = false"
)


class ExifToolPool:
    """*processes* exiftool processes; each call borrows one for its duration."""

    def __init__(self, processes: int = 1) -> None:
        import exiftool

        self._idle: queue.Queue[Any] = queue.Queue()
        self._all: list[Any] = []
        try:
            for _ in range(max(1, processes)):
                et = exiftool.ExifToolHelper(common_args=["-G1", "-charset", "filename=utf8"])
                et.run()
                self._all.append(et)
                self._idle.put(et)
        except FileNotFoundError:
            self.close()
            raise MetadataError("exiftool", INSTALL_ADVICE) from None

    @property
    def size(self) -> int:
        return len(self._all)

    def execute(self, path: str | Path, args: list[str]) -> str:
        """Run one exiftool command; errors become MetadataError naming *path*."""
        import exiftool.exceptions

        for a in args:
            if "\n" in a or "\r" in a:  # defence in depth: sanitize() already removed them
                raise MetadataError(path, "refusing to pass a line break to exiftool")
        et = self._idle.get()
        try:
            return str(et.execute(*args))
        except exiftool.exceptions.ExifToolExecuteError as exc:
            raise MetadataError(path, _exiftool_reason(exc.stderr or exc.stdout or str(exc))) from None
        except (exiftool.exceptions.ExifToolException, OSError) as exc:
            raise MetadataError(path, f"exiftool failed: {exc}") from None
        finally:
            self._idle.put(et)

    def close(self) -> None:
        for _ in self._all:
            et = self._idle.get()  # waits for a call in progress to finish
            if et.running:
                et.terminate()
        self._all.clear()


def sidecar_path(path: str | Path, pattern: str) -> Path:
    p = Path(path)
    return p.with_name(pattern.format(name=p.name, stem=p.stem))


def target_for(path: str | Path, config: MetadataConfig) -> Path:
    """The file itself, or its sidecar when the format, permissions or config say so.

    Raises MetadataError when ``sidecar = "never"`` and the file cannot hold the tags.
    """
    p = Path(path)
    if config.sidecar == "always":
        return sidecar_path(p, config.sidecar_name)
    reason = None
    if extension(p) in SIDECAR_ONLY_EXTENSIONS:
        reason = f"{extension(p)} files cannot hold these tags"
    elif not os.access(p, os.W_OK) or not os.access(p.parent, os.W_OK):
        reason = "the file or its folder is read-only"  # exiftool writes a temp file beside it and renames
    if reason is None:
        return p
    if config.sidecar == "never":
        raise MetadataError(path, f'not written: {reason} and metadata.sidecar is "never"')
    return sidecar_path(p, config.sidecar_name)


class MetadataWriter:
    """Reads our fields from files and writes them, keeping a person's work (see ``plan``)."""

    def __init__(self, config: MetadataConfig | None = None, processes: int = 1) -> None:
        self.config = config or MetadataConfig()
        self.exiftool = ExifToolPool(processes)
        self.processes = self.exiftool.size

    def close(self) -> None:
        self.exiftool.close()

    def __enter__(self) -> MetadataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def target_for(self, path: str | Path) -> Path:
        return target_for(path, self.config)

    def read(self, path: str | Path) -> dict[str, Any]:
        """Our fields as they are in *path* now (lists for keyword tags); {} for a missing file."""
        _check_name(path)
        if not os.path.exists(path):
            return {}
        args = ["-j", "-struct", *[f"-{k}" for k in READ_KEYS], str(path)]
        return our_fields(json.loads(self.exiftool.execute(path, args) or "[{}]")[0])

    def read_many(self, paths: list[Path]) -> dict[Path, dict[str, Any]]:
        """Like read() for several files in one exiftool command; a file it could not read is left out."""
        names = [p for p in dict.fromkeys(paths) if "\n" not in str(p) and "\r" not in str(p)]
        out: dict[Path, dict[str, Any]] = {p: {} for p in names if not p.exists()}
        names = [p for p in names if p not in out]
        if names:
            args = ["-j", "-struct", *[f"-{k}" for k in READ_KEYS], *map(str, names)]
            try:
                data = json.loads(self.exiftool.execute(names[0], args) or "[]")
            except (MetadataError, ValueError):
                return out  # one bad file fails the command: each is read again on its own
            by_name = {str(p): p for p in names}
            out.update((by_name[d["SourceFile"]], our_fields(d)) for d in data if d.get("SourceFile") in by_name)
        return out

    def write(
        self,
        path: str | Path,
        *,
        alt_text: str,
        description: str,
        keywords: list[str],
        previous: dict[str, Any] | None = None,
        decided: Decisions | None = None,
        dry_run: bool = False,
        current: dict[str, Any] | None = None,
        read_at: Stat | None = None,
    ) -> Outcome:
        """Write our fields into *path* (or its sidecar), keeping a person's work and decisions.

        *previous* is what the index says we wrote last time, *decided* the
        person's decisions about this image. *current* is the target's fields
        if the caller has just read them (read_many), when the target's stat
        was *read_at*. With *dry_run* nothing is written: the outcome says
        what would change.
        """
        _check_name(path)
        target = self.target_for(path)
        where = Target(str(target), target == Path(path), extension(path))
        self._check_writable(path, target, where.embedded)
        if where.embedded and pdf.is_pdf(path) and (refused := pdf.protection(str(path))):
            raise MetadataError(path, f"not written: {refused}")
        wanted = Wanted(alt_text, description, keywords)
        for _ in range(3):
            if current is None:
                read_at, current = stat_of(target), self.read(target)
            outcome = plan(wanted, current, previous, self.config, where, decided)
            if not outcome.args or dry_run:
                return outcome
            if read_at is not None and stat_of(target) != read_at:
                # Another program wrote it since we read it: never replace a newer edit.
                log.info("%s changed while we planned its metadata: reading it again", target)
                current = None
                continue
            # -P keeps the file's modification time: people sort photos by it.
            self.exiftool.execute(path, ["-overwrite_original", "-P", *outcome.args, str(target)])
            return outcome
        raise MetadataError(path, "the file kept changing while we tried to write its metadata; will retry")

    @staticmethod
    def _check_writable(path: str | Path, target: Path, embedded: bool) -> None:
        if (
            not embedded
            and not os.access(target.parent, os.W_OK)
            and not (target.exists() and os.access(target, os.W_OK))
        ):
            raise MetadataError(
                path, f"cannot write metadata: neither the file nor a sidecar in {target.parent} is writable"
            )


Stat = tuple[int, int, int] | None  # (inode, size, mtime_ns) of a target; None when it does not exist


def stat_of(path: str | Path) -> Stat:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def our_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our fields from one exiftool JSON record (lists for keyword tags)."""
    out: dict[str, Any] = {}
    for key in READ_KEYS:
        value = data.get(key)
        if value is None or value == "":
            continue
        if key in LIST_KEYS:
            out[key] = [str(v) for v in (value if isinstance(value, list) else [value])]
        else:
            out[key] = str(value)
    return out


def _check_name(path: str | Path) -> None:
    if "\n" in str(path) or "\r" in str(path):
        raise MetadataError(path, "exiftool cannot take a file name containing a line break; rename the file")


def _exiftool_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith(("Error", "Warning"))]
    text = lines[0] if lines else (stderr.strip().splitlines() or ["unknown exiftool error"])[0]
    return "exiftool: " + re.sub(r" - /.*$", "", text)


def remove_stale_temp_files(folders: list[Path]) -> list[Path]:
    """Delete ``*_exiftool_tmp`` files a crash left behind; they block later writes."""
    removed: list[Path] = []
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith("_exiftool_tmp"):
                    p = Path(root, name)
                    try:
                        p.unlink()
                        removed.append(p)
                        log.warning("removed %s, left by an interrupted metadata write", p)
                    except OSError as exc:
                        log.warning("cannot remove stale %s: %s", p, exc.strerror)
    return removed
