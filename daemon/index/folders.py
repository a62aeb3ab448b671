"""Which folders are watched, by which host: files under a folder dropped from the config are hidden.

Each watcher registers its folders as it starts. A folder it watched before and
no longer does is kept as *unwatched*: the files under it (and under no folder
another watcher still watches) leave search with state ``unwatched``, their
results kept, and ``status`` lists them. Nothing is removed until a person says
so (``florence-watch forget-unwatched``); a folder put back in the config is
scanned again and its files come back, recognised by content.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from daemon.files import is_under, under
from daemon.index import records
from daemon.index.db import File, Job, WatchedFolder, now

LIVE = ("pending", "indexed", "failed")


def register(session: Session, host: str, folders: list[str]) -> int:
    """*host*'s watcher watches *folders* now; hide the files under folders it dropped. How many were hidden."""
    rows = {r.path: r for r in session.scalars(select(WatchedFolder).where(WatchedFolder.host == host))}
    for path in folders:
        if path in rows:
            rows[path].watched, rows[path].seen_at = True, now()
        else:
            session.add(WatchedFolder(host=host, path=path, watched=True))
    for path, row in rows.items():
        if path not in folders:
            row.watched = False
    session.flush()
    return _hide(session)


def _hide(session: Session) -> int:
    watched = list(session.scalars(select(WatchedFolder.path).where(WatchedFolder.watched)))
    hidden = 0
    for folder in unwatched_folders(session):
        paths = session.scalars(select(File.path).where(under(File.path, folder), File.state.in_(LIVE)))
        gone = [p for p in paths if not any(is_under(p, w) for w in watched)]
        for chunk in (gone[i : i + 500] for i in range(0, len(gone), 500)):
            session.execute(update(File).where(File.path.in_(chunk)).values(state="unwatched"))
            session.execute(delete(Job).where(Job.path.in_(chunk), Job.state != "running"))
        hidden += len(gone)
    return hidden


def unwatched_folders(session: Session) -> list[str]:
    """Folders some watcher dropped from its config that no watcher watches."""
    watched = set(session.scalars(select(WatchedFolder.path).where(WatchedFolder.watched)))
    return sorted(set(session.scalars(select(WatchedFolder.path).where(~WatchedFolder.watched))) - watched)


def hidden(session: Session) -> list[dict[str, object]]:
    """Each unwatched folder with how many of its files are hidden from search (for ``status``)."""
    out: list[dict[str, object]] = []
    for folder in unwatched_folders(session):
        n = session.scalar(
            select(func.count()).select_from(File).where(under(File.path, folder), File.state == "unwatched")
        )
        if n:  # a dropped folder that held nothing has nothing to say
            out.append({"folder": folder, "files": n})
    return out


def forget_unwatched(session: Session) -> int:
    """Remove from the index the files hidden under unwatched folders, and those folders; how many files."""
    paths = list(session.scalars(select(File.path).where(File.state == "unwatched")))
    n = records.mark_all_deleted(session, paths)
    for folder in unwatched_folders(session):
        session.execute(delete(WatchedFolder).where(WatchedFolder.path == folder, ~WatchedFolder.watched))
    return n
