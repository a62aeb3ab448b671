"""The index made equal to the disk, at start-up and when a watched folder comes back (a remount).

One walk of each watched folder, stat only (nothing is decoded or hashed):
what is new or changed is queued (a moved or renamed file is recognised by
its content when it is processed and keeps its results with no model run);
what is gone leaves the index and search. Safety first: a watched folder that
is missing, empty while the index holds files in it (a share not mounted yet),
or that cannot be listed in full (an I/O error) is never taken as "everything
was deleted": nothing under it is removed, and the reason is logged and kept
for ``status`` and ``doctor``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from daemon.config import Config, database_url, xdg_home
from daemon.imaging import Fingerprint
from daemon.index import records
from daemon.index.db import Database
from daemon.index.folders import register
from daemon.service.watch import walk_candidates

log = logging.getLogger(__name__)

Stat = tuple[int, int, int]  # inode, size, mtime_ns
SAMPLES = 20  # paths kept per kind for status; the counts are exact


@dataclass
class Reconciled:
    """What one reconcile did: files removed, moved or renamed, changed; folders left alone and why."""

    at: float = field(default_factory=time.time)
    removed: int = 0
    moved: int = 0
    changed: int = 0
    queued: int = 0  # new or changed files handed to the queue
    hidden: int = 0  # files under folders dropped from the config, hidden from search
    samples: dict[str, list[str]] = field(default_factory=lambda: {"removed": [], "moved": [], "changed": []})
    skipped: dict[str, str] = field(default_factory=dict)  # folder -> why nothing under it was removed

    def note(self, kind: str, paths: list[str]) -> None:
        setattr(self, kind, getattr(self, kind) + len(paths))
        self.samples[kind] = (self.samples[kind] + paths)[:SAMPLES]


def reconcile(
    db: Database,
    config: Config,
    offer: Callable[[Iterable[str]], int] | None = None,
    folders: list[Path] | None = None,
) -> Reconciled:
    """Make the index equal *folders* on disk; *offer* queues what is new or changed.

    With *folders* None (the start-up), this host's watched folders are registered first: files
    under a folder dropped from the config are hidden from search (``index.folders``).
    """
    done = Reconciled()
    if folders is None:
        with db.transaction(write=True) as s:
            done.hidden = register(s, socket.gethostname(), [str(f) for f in config.folders])
        if done.hidden:
            log.warning(
                "%d file(s) under folders no longer in the config left search; "
                "florence-watch status lists them, florence-watch forget-unwatched removes them",
                done.hidden,
            )
    for folder in config.folders if folders is None else folders:
        with db.transaction() as s:
            known = records.live_stats_under(s, str(folder))
        on_disk, unsafe = _listing(folder, config.watch.follow_symlinks, bool(known))
        if offer is not None:  # what could be listed is queued even where nothing may be removed
            done.queued += offer(on_disk)
        if unsafe:
            log.warning("not reconciling %s with the index: %s; nothing under it is removed", folder, unsafe)
            done.skipped[str(folder)] = unsafe
            continue
        # Not found by the walk and not there at all: a file the walk skips (a hidden folder) is not gone.
        gone = sorted(p for p in set(known) - set(on_disk) if not os.path.lexists(p))
        if gone:
            with db.transaction(write=True) as s:
                records.mark_all_deleted(s, gone)
        moved = _moved({p: known[p] for p in gone}, {p: st for p, st in on_disk.items() if p not in known})
        moved_from = set(moved.values())
        done.note("moved", sorted(moved))
        done.note("removed", [p for p in gone if p not in moved_from])
        done.note("changed", sorted(p for p, st in on_disk.items() if _changed(known.get(p), st)))
    if done.removed or done.moved or done.changed:
        log.info("reconciled with the disk: %s", summary(asdict(done)))
    save(config, done)
    return done


def _moved(gone: dict[str, Stat | None], new: dict[str, Stat]) -> dict[str, str]:
    """New path -> the gone path it was moved or renamed from, matched by stat (inode, else size and mtime)."""
    by_inode = {st: p for p, st in gone.items() if st is not None}
    by_time = {st[1:]: p for p, st in gone.items() if st is not None}
    found: dict[str, str] = {}
    for path, st in sorted(new.items()):
        old = by_inode.pop(st, None) or by_time.pop(st[1:], None)  # across filesystems the inode is new
        if old is not None:
            found[path] = old
    return found


def _changed(before: Stat | None, now: Stat) -> bool:
    """Size or mtime differ: new content (a new inode alone is a remount or a copy back; offer still checks)."""
    return before is not None and before[1:] != now[1:]


def _listing(folder: Path, follow_symlinks: bool, indexed: bool) -> tuple[dict[str, Stat], str]:
    """The image files under *folder* with their stat, and why their absence must not count ('' if it may)."""
    if not folder.is_dir():
        return {}, "the folder is missing"
    errors: list[OSError] = []
    found: dict[str, Stat] = {}
    for path in walk_candidates(folder, follow_symlinks, onerror=errors.append):
        try:
            found[path] = Fingerprint.of(path).stat
        except OSError:
            pass  # gone between the listing and the stat: it is not on disk
    if errors:
        return found, f"cannot list {errors[0].filename}: {errors[0].strerror or errors[0]}"
    if indexed and not found and not any(os.scandir(folder)):
        return found, "the folder is empty while the index holds files in it (a share not mounted?)"
    return found, ""


def summary(r: dict[str, object]) -> str:
    """'2 removed, 1 moved or renamed, 1 changed' for a saved reconcile."""
    return f"{r['removed']} removed, {r['moved']} moved or renamed, {r['changed']} changed"


def state_file(config: Config) -> Path:
    """Where the last reconcile of this index is kept for ``status`` (one file per index)."""
    key = hashlib.sha1(database_url(config.index.database).encode()).hexdigest()[:12]
    return xdg_home("STATE") / "florence-watch" / f"reconciled-{key}.json"


def save(config: Config, done: Reconciled) -> None:
    """Keep *done* for ``status`` (a write that fails only loses the report)."""
    path = state_file(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(done)), encoding="utf-8")
    except OSError as exc:
        log.debug("cannot keep the reconcile report in %s: %s", path, exc)


def last(config: Config) -> dict[str, object] | None:
    """The last reconcile of this index on this computer, as saved; None if there was none (or an old one)."""
    try:
        data = json.loads(state_file(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("removed"), int) else None
