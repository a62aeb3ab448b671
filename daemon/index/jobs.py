"""The durable job queue: a table in the index database.

A job is one path to (re)process. Claiming marks jobs ``running`` with the
claiming worker as owner (host, pid and start time) and a lease: the owner's
heartbeat renews it, and once it has run out any worker may claim the job
again, so the jobs of a worker that died (SIGKILL, power cut, a host that
vanished) go back to the queue by themselves. On PostgreSQL several workers
claim at once with ``FOR UPDATE SKIP LOCKED``; SQLite's write lock
serialises claims. Finishing a job deletes it in the same transaction that
stores its results, and only while its claim is still the finisher's own,
so a crash leaves either the job or the results, never half of each, and
no job is stored twice.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from daemon.index.db import Job, chunks, now

RETRY_DELAYS_S = (5.0, 30.0, 120.0)
LEASE_S = 60.0  # how long a claim lasts without a heartbeat (index.lease_seconds)
_STARTED = int(time.time())


def owner_id() -> str:
    """This process as a job owner: host, pid and start time (a pid alone means nothing on another host)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_STARTED}"


def enqueue(session: Session, paths: Iterable[str]) -> int:
    """Queue *paths*; a path already queued is made due now (a new event retries a failure)."""
    unique = list(dict.fromkeys(paths))
    queued: dict[str, Job] = {}
    for chunk in chunks(unique):
        queued.update((j.path, j) for j in session.scalars(select(Job).where(Job.path.in_(chunk))))
    new = [path for path in unique if path not in queued]
    if new and session.get_bind().dialect.name == "postgresql":
        # Another watcher (or a scan on another host) may queue the same path at this moment.
        from sqlalchemy.dialects.postgresql import insert

        for chunk in chunks(new):
            session.execute(
                insert(Job).values([{"path": p} for p in chunk]).on_conflict_do_nothing(index_elements=["path"])
            )
    else:
        session.add_all(Job(path=p) for p in new)
    for path in unique:
        job = queued.get(path)
        if job is None:
            continue
        if job.state == "running":
            job.dirty = True  # finish() puts it back in the queue
        else:
            job.state, job.not_before, job.attempts = "pending", 0.0, 0
    return len(unique)


def claim(session: Session, limit: int, owner: str | None = None, lease_s: float = LEASE_S) -> list[Job]:
    """Take up to *limit* due jobs, oldest first: pending ones, and running ones whose lease ran out."""
    t = now()
    query = (
        select(Job)
        .where(
            or_(
                and_(Job.state == "pending", Job.not_before <= t),
                and_(Job.state == "running", Job.lease_until.is_not(None), Job.lease_until < t),
            )
        )
        .order_by(Job.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)  # other workers take the next rows, never these
    jobs = list(session.scalars(query))
    for job in jobs:
        job.state, job.owner, job.lease_until = "running", owner or owner_id(), t + lease_s
    return jobs


def renew(session: Session, owner: str, lease_s: float = LEASE_S) -> int:
    """The heartbeat: extend the leases of *owner*'s running jobs; how many it holds."""
    jobs = cast(Table, Job.__table__)
    result = session.execute(
        update(jobs).where(jobs.c.owner == owner, jobs.c.state == "running").values(lease_until=now() + lease_s)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def owned(session: Session, job_ids: Iterable[int], owner: str) -> set[int]:
    """Those of *job_ids* still claimed by *owner*, locked until the transaction ends.

    A worker whose lease ran out may find its jobs taken by another: it
    must not store their results too.
    """
    ids = list(job_ids)
    query = select(Job.id).where(Job.id.in_(ids), Job.owner == owner, Job.state == "running")
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return set(session.scalars(query))


def finish(session: Session, *job_ids: int) -> None:
    """Done: delete the jobs, except those whose file changed meanwhile (queued again)."""
    # Plain table statements: the ORM's bulk-statement bookkeeping cost more
    # than the SQL, and the session holds no jobs it would need to update.
    jobs = cast(Table, Job.__table__)
    session.execute(delete(jobs).where(jobs.c.id.in_(job_ids), jobs.c.dirty.is_(False)))
    session.execute(
        update(jobs)
        .where(jobs.c.id.in_(job_ids))
        .values(state="pending", dirty=False, owner=None, lease_until=None, attempts=0, not_before=0.0)
    )


def fail(session: Session, job_id: int, reason: str, max_attempts: int) -> bool:
    """Record a failed attempt; returns True when the job has given up."""
    job = session.get(Job, job_id)
    if job is None:
        return True
    if job.dirty:  # it changed while we tried: try the new content afresh
        job.state, job.dirty, job.owner, job.attempts, job.not_before = "pending", False, None, 0, 0.0
        return False
    job.owner = job.lease_until = None
    job.attempts += 1
    job.error = reason
    if job.attempts >= max_attempts:
        job.state = "failed"
        return True
    job.state = "pending"
    job.not_before = now() + RETRY_DELAYS_S[min(job.attempts, len(RETRY_DELAYS_S)) - 1]
    return False


def release(session: Session, job_ids: Iterable[int], delay_s: float = 0.0, reason: str | None = None) -> None:
    """Give claimed jobs back to the queue untouched: at shutdown, or (after *delay_s*, with *reason*) a
    file this host cannot see, for another worker or a later try."""
    ids = list(job_ids)
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.state == "running")
            .values(state="pending", owner=None, lease_until=None, not_before=now() + delay_s, error=reason)
        )


def release_owner(session: Session, owner: str) -> None:
    """Give back every job *owner* holds (a worker starting over after losing its index for a while)."""
    session.execute(
        update(Job)
        .where(Job.owner == owner, Job.state == "running")
        .values(state="pending", owner=None, lease_until=None)
    )


def recover(session: Session) -> int:
    """Requeue at once the running jobs of processes of this host that are gone.

    Jobs of other hosts' workers are theirs until their leases run out.
    """
    stale = [
        job.id
        for job in session.scalars(select(Job).where(Job.state == "running"))
        # lease_until None: claimed by a version before leases, whose heartbeat will never come
        if gone(job.owner or "") or job.lease_until is None
    ]
    release(session, stale)
    return len(stale)


def gone(owner: str) -> bool:
    """Whether *owner* is a process of this host that no longer runs (at start-up: any but ours is)."""
    host, pid, _start = _parse_owner(owner)
    return host == socket.gethostname() and (pid is None or not _alive(pid) or pid == os.getpid())


def _parse_owner(owner: str) -> tuple[str, int | None, str]:
    """host:pid:start (or host:pid, as versions before leases wrote it)."""
    parts = owner.split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), int(parts[-2]), parts[-1]
    host, _, pid = owner.rpartition(":")
    return host, int(pid) if pid.isdigit() else None, ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: n for state, n in rows}


def _retrying() -> ColumnElement[bool]:
    """Pending jobs with a reason from an earlier try: a failed attempt (``fail``), or a file this
    host could not see (``release`` with a delay). A job queued anew (``enqueue``) starts from
    nothing (no attempts, due at once), whatever reason it still carries."""
    return and_(Job.state == "pending", Job.error.is_not(None), or_(Job.attempts > 0, Job.not_before > 0))


def retrying(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """The first *limit* jobs waiting for another try, soonest first: path, failed attempts so
    far, next try (a time, and the seconds until it: 0 once due) and the last reason. For ``status``."""
    query = (
        select(Job.path, Job.attempts, Job.not_before, Job.error)
        .where(_retrying())
        .order_by(Job.not_before, Job.id)
        .limit(limit)
    )
    t = now()
    return [
        {
            "path": path,
            "attempts": attempts,
            "next_try": not_before,
            "next_try_in_seconds": round(max(0.0, not_before - t), 1),
            "reason": error,
        }
        for path, attempts, not_before, error in session.execute(query)
    ]


def retrying_count(session: Session) -> int:
    """How many jobs wait for another try (``retrying`` lists the first of them)."""
    return int(session.scalar(select(func.count()).select_from(Job).where(_retrying())) or 0)


def throughput(to_do: int, workers: Iterable[dict[str, Any]], live_within_s: float) -> dict[str, Any]:
    """The queue's drain rate and how long *to_do* jobs will take at it.

    Live workers are those that process images (not ``watch``) and beat within
    *live_within_s* (a lease: past it their claims are up for grabs); their
    rates add up. ``eta_seconds`` is None with no live worker or no rate yet.
    """
    live = [w for w in workers if w["role"] != "watch" and w["seconds_since_heartbeat"] <= live_within_s]
    rate = round(sum((float(w["images_per_s"]) for w in live), 0.0), 2)
    eta = to_do / rate if live and rate > 0 else None
    return {"to_do": to_do, "live_workers": len(live), "images_per_s": rate, "eta_seconds": eta}
