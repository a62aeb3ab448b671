"""Watching folders: watchdog events -> settled paths.

A file is handed on only once it has *settled*: no event for
``settle_seconds``, then two identical stats in a row. The decode that
follows in the pipeline is the third check. Temp names, dot-files, sidecars
and exiftool's own temp files are ignored here; the daemon's own metadata
writes are recognised later by fingerprint (``Pipeline.offer``), never by
pausing the watch.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.errors import FlorenceWatchError
from daemon.files import is_candidate, is_ignored_path, is_sidecar, is_under

log = logging.getLogger(__name__)

INOTIFY_ADVICE = (
    "raise the limits with: sudo sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512 "
    "(and add them to /etc/sysctl.d/ to keep them), or set watch.polling = true"
)


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def walk_folders(
    root: Path, follow_symlinks: bool = False, onerror: Callable[[OSError], object] | None = None
) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` that enters each folder once: a symlink loop ends there (the caller may prune *dirnames*).

    *onerror* gets each folder that could not be listed (os.walk would skip it without a word).
    """
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks, onerror=onerror):
        ident = _identity(Path(dirpath))
        if ident is None:
            continue
        if ident in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(ident)
        yield dirpath, dirnames, filenames


def walk_candidates(
    root: Path, follow_symlinks: bool = False, onerror: Callable[[OSError], object] | None = None
) -> Iterator[str]:
    """Every image file under *root* (or *root* itself), skipping hidden folders (*onerror*: as walk_folders)."""
    if not follow_symlinks and root.is_symlink():
        return
    if root.is_file():
        if is_candidate(root):
            yield str(root)
        return
    for dirpath, dirnames, filenames in walk_folders(root, follow_symlinks, onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if is_candidate(path) and (follow_symlinks or not os.path.islink(path)):
                yield path


class SettleTracker:
    """Paths seen in events, released once quiet and stable."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, tuple[int, int, int] | None]] = {}

    def touch(self, path: str) -> None:
        with self._lock:
            self._pending[path] = (time.monotonic(), None)

    def discard(self, path: str) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def due(self) -> list[str]:
        """Paths that were quiet long enough and whose stat did not change since the last look."""
        now = time.monotonic()
        ready: list[str] = []
        with self._lock:
            for path, (last, seen) in list(self._pending.items()):
                if now - last < self.settle_seconds:
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    del self._pending[path]
                    continue
                stat = (st.st_ino, st.st_size, st.st_mtime_ns)
                if seen == stat:
                    ready.append(path)
                    del self._pending[path]
                else:
                    # First look, or it changed: look again a moment later.
                    self._pending[path] = (now - self.settle_seconds + 0.5, stat)
        return ready


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Our own reads (and everyone's) open and close files: not a change.
        if isinstance(event, (FileOpenedEvent, FileClosedNoWriteEvent)) or event.event_type == "attrib":
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if getattr(event, "dest_path", "") else ""
        if event.event_type == "deleted" or isinstance(event, DirDeletedEvent):
            self.w.tracker.discard(src)
            if Path(src) in self.w.folders:
                # A watched folder itself (deleted, or a share unmounted) is not "everything was deleted":
                # its files stay until it comes back and is reconciled.
                log.warning("watched folder %s is gone; nothing under it leaves the index", src)
            else:
                self.w.on_deleted(src)
        elif event.event_type == "moved":
            self.w.tracker.discard(src)
            if not self.w.inside(dest) or isinstance(event, DirMovedEvent) or is_candidate(src):
                self.w.on_deleted(src)
            if self.w.inside(dest):
                self.w.consider(dest, is_dir=isinstance(event, DirMovedEvent))
        elif isinstance(event, DirCreatedEvent):
            self.w.consider(src, is_dir=True)
        elif event.event_type in ("created", "modified") or isinstance(event, FileClosedEvent):
            if not event.is_directory:
                self.w.consider(src, is_dir=False)


class Later(Exception):
    """Raised by ``on_settled``: the files wait and are offered again; the caller has said why."""


class FolderWatcher:
    """Observers on the watched folders plus a thread that releases settled files."""

    def __init__(
        self,
        folders: list[Path],
        on_settled: Callable[[list[str]], None],
        on_deleted: Callable[[str], None],
        *,
        on_back: Callable[[Path], object] | None = None,
        settle_seconds: float = 2.0,
        polling: bool = False,
        recursive: bool = True,
        follow_symlinks: bool = False,
    ) -> None:
        self.folders = [Path(os.path.abspath(f)) for f in folders]
        self.on_settled = on_settled
        self.on_deleted = on_deleted
        self.on_back = on_back  # a watched folder came back (remounted, made again): reconcile it
        self.recursive = recursive
        self.follow_symlinks = follow_symlinks
        self.tracker = SettleTracker(settle_seconds)
        self.polling = polling
        self.observer: BaseObserver | None = None
        self._handler = _Handler(self)
        self._watches: dict[Path, Any] = {}
        self._roots: dict[Path, tuple[int, int] | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._settle_loop, name="settle", daemon=True)

    def inside(self, path: str) -> bool:
        return any(is_under(path, f) for f in self.folders)

    def _via_symlink(self, path: str) -> bool:
        """True if *path* is, or lies under, a symbolic link inside a watched folder."""
        p = Path(path)
        while not any(p == f for f in self.folders) and p != p.parent:
            if p.is_symlink():
                return True
            p = p.parent
        return False

    def consider(self, path: str, *, is_dir: bool) -> None:
        if is_ignored_path(path, self.folders):
            return
        if not self.follow_symlinks and self._via_symlink(path):
            return  # links are not followed (out of the folders, or round in a loop)
        if is_dir:
            # A folder created or moved in: its files bring no events of their own.
            for p in walk_candidates(Path(path), self.follow_symlinks):
                self.tracker.touch(p)
        elif is_candidate(path) or is_sidecar(path):  # a sidecar edited by a photo tool: see Pipeline.offer
            self.tracker.touch(path)

    def start(self) -> None:
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._roots[folder] = _identity(folder)
        self.observer = self._start_observer()
        self._thread.start()

    def _start_observer(self) -> BaseObserver:
        if not self.polling:
            observer: BaseObserver = Observer()
            try:
                self._schedule(observer)
                observer.start()
                return observer
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENOSPC, errno.ENOSYS, errno.EINVAL, errno.EPERM):
                    raise
                log.warning(
                    "inotify cannot watch these folders (%s): falling back to polling, which is slower; %s",
                    exc.strerror or exc,
                    INOTIFY_ADVICE,
                )
                try:
                    observer.stop()
                except Exception:  # noqa: BLE001 - it may never have started
                    pass
        else:
            log.info("watching by polling (watch.polling = true)")
        observer = PollingObserver(timeout=1.0)
        self._schedule(observer)
        observer.start()
        return observer

    def _schedule(self, observer: BaseObserver) -> None:
        for folder in self.folders:
            self._watches[folder] = observer.schedule(self._handler, str(folder), recursive=self.recursive)

    def _check_roots(self) -> None:
        """A watched folder deleted and created again is a new folder: watch it anew."""
        assert self.observer is not None
        for folder in self.folders:
            ident = _identity(folder)
            if ident == self._roots.get(folder):
                continue
            self._roots[folder] = ident
            if ident is None:
                log.warning("watched folder %s is gone; it will be watched again when it comes back", folder)
                continue
            log.info("watched folder %s is back: watching it again", folder)
            try:
                self.observer.unschedule(self._watches[folder])
            except (KeyError, OSError):
                pass  # the old watch died with the old folder
            try:
                self._watches[folder] = self.observer.schedule(self._handler, str(folder), recursive=self.recursive)
            except OSError as exc:
                log.error("cannot watch %s again: %s", folder, exc.strerror or exc)
                self._roots[folder] = None
                continue
            self.consider(str(folder), is_dir=True)
            if self.on_back is not None:
                self.on_back(folder)

    def _settle_loop(self) -> None:
        ticks, failing = 0, ""  # failing: why the last queueing failed, logged once
        while not self._stop.wait(0.25):
            ticks += 1
            if ticks % 4 == 0:
                try:
                    self._check_roots()
                except Exception:
                    log.exception("checking the watched folders failed")
            ready = self.tracker.due()
            if ready:
                failing = _offer(self.on_settled, self.tracker, ready, failing)

    def stop(self) -> None:
        self._stop.set()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _offer(on_settled: Callable[[list[str]], None], tracker: SettleTracker, ready: list[str], failing: str) -> str:
    """Hand the settled files on; those that cannot be queued wait. Returns why they could not ('')."""
    try:
        on_settled(ready)
    except Exception as exc:
        if isinstance(exc, Later):
            pass  # told by the caller
        elif not isinstance(exc, FlorenceWatchError):
            log.exception("could not queue %d settled file(s)", len(ready))
        elif str(exc) != failing:  # the index is away, say: its words say it all, once
            log.warning("could not queue %d settled file(s): %s; trying again", len(ready), exc)
        for p in ready:
            tracker.touch(p)
        return str(exc) or type(exc).__name__
    if failing:
        log.info("queued %d settled file(s) that waited for the index", len(ready))
    return ""
