"""At start-up, the index made equal to the disk: files deleted or moved away while the daemon was stopped
leave the index and search.

The start-up scan queues what is new or changed (a moved or renamed file is
recognised by its content when it is processed, and keeps its results with
no model run); this removes what is gone. Stat only: nothing is decoded or
hashed. Safety first: a watched folder that is missing, empty while the index
holds files in it (a share not mounted yet), or that cannot be listed in full
(an I/O error) is never taken as "everything was deleted": nothing under it
is removed, and the reason is logged and kept for ``status``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from daemon.config import Config, database_url, xdg_home
from daemon.index import records
from daemon.index.db import Database
from daemon.service.watch import walk_candidates

log = logging.getLogger(__name__)


@dataclass
class Reconciled:
    """What one start-up reconcile did: files removed from the index, folders left alone and why."""

    at: float = field(default_factory=time.time)
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # folder -> why nothing under it was removed


def reconcile(db: Database, config: Config) -> Reconciled:
    """Remove from the index the files under the watched folders that are no longer on disk."""
    done = Reconciled()
    for folder in config.folders:
        with db.transaction() as s:
            known = records.live_paths_under(s, str(folder))
        on_disk, unsafe = _listing(folder, config.watch.follow_symlinks, bool(known))
        if unsafe:
            log.warning("not reconciling %s with the index: %s; nothing under it is removed", folder, unsafe)
            done.skipped[str(folder)] = unsafe
            continue
        # Not found by the walk and not there at all: a file the walk skips (a hidden folder) is not gone.
        gone = sorted(p for p in known - on_disk if not os.path.lexists(p))
        if gone:
            with db.transaction(write=True) as s:
                records.mark_all_deleted(s, gone)
            done.removed += gone
    if done.removed:
        log.info("start-up reconcile: %d file(s) gone from disk left the index", len(done.removed))
    save(config, done)
    return done


def _listing(folder: Path, follow_symlinks: bool, indexed: bool) -> tuple[set[str], str]:
    """The image files under *folder*, and why their absence must not count as deletions ('' if it may)."""
    if not folder.is_dir():
        return set(), "the folder is missing"
    errors: list[OSError] = []
    found = set(walk_candidates(folder, follow_symlinks, onerror=errors.append))
    if errors:
        return found, f"cannot list {errors[0].filename}: {errors[0].strerror or errors[0]}"
    if indexed and not found and not any(os.scandir(folder)):
        return found, "the folder is empty while the index holds files in it (a share not mounted?)"
    return found, ""


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
    """The last start-up reconcile of this index on this computer, as saved; None if there was none."""
    try:
        data = json.loads(state_file(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
