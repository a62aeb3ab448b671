"""The durable job queue: a table in the index database.

A job is one path to (re)process. Claiming marks jobs ``running`` with the
claiming process as owner; finishing a job deletes it in the same
transaction that stores its results, so a crash leaves either the pending
job or the finished results, never half of each. At start-up, jobs whose
owner process is gone go back to ``pending``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import cast

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.orm import Session

from .db import Job, chunks, now

RETRY_DELAYS_S = (5.0, 30.0, 120.0)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue(session: Session, paths: Iterable[str]) -> int:
    """Queue *paths*; a path already queued is made due now (a new event retries a failure)."""
    unique = list(dict.fromkeys(paths))
    queued: dict[str, Job] = {}
    for chunk in chunks(unique):
        queued.update((j.path, j) for j in session.scalars(select(Job).where(Job.path.in_(chunk))))
    for path in unique:
        job = queued.get(path)
        if job is None:
            session.add(Job(path=path))
        elif job.state == "running":
            job.dirty = True  # finish() puts it back in the queue
        else:
            job.state, job.not_before, job.attempts = "pending", 0.0, 0
    return len(unique)


def claim(session: Session, limit: int, owner: str | None = None) -> list[Job]:
    """Take up to *limit* due jobs, oldest first."""
    jobs = list(
        session.scalars(
            select(Job).where(Job.state == "pending", Job.not_before <= now()).order_by(Job.id).limit(limit)
        )
    )
    for job in jobs:
        job.state, job.owner = "running", owner or owner_id()
    return jobs


def finish(session: Session, *job_ids: int) -> None:
    """Done: delete the jobs, except those whose file changed meanwhile (queued again)."""
    # Plain table statements: the ORM's bulk-statement bookkeeping cost more
    # than the SQL, and the session holds no jobs it would need to update.
    jobs = cast(Table, Job.__table__)
    session.execute(delete(jobs).where(jobs.c.id.in_(job_ids), jobs.c.dirty.is_(False)))
    session.execute(
        update(jobs)
        .where(jobs.c.id.in_(job_ids))
        .values(state="pending", dirty=False, owner=None, attempts=0, not_before=0.0)
    )


def fail(session: Session, job_id: int, reason: str, max_attempts: int) -> bool:
    """Record a failed attempt; returns True when the job has given up."""
    job = session.get(Job, job_id)
    if job is None:
        return True
    if job.dirty:  # it changed while we tried: try the new content afresh
        job.state, job.dirty, job.owner, job.attempts, job.not_before = "pending", False, None, 0, 0.0
        return False
    job.attempts += 1
    job.error = reason
    if job.attempts >= max_attempts:
        job.state = "failed"
        return True
    job.state = "pending"
    job.not_before = now() + RETRY_DELAYS_S[min(job.attempts, len(RETRY_DELAYS_S)) - 1]
    return False


def release(session: Session, job_ids: Iterable[int]) -> None:
    """Give claimed jobs back to the queue untouched (shutdown before processing)."""
    ids = list(job_ids)
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids)).values(state="pending", owner=None))


def recover(session: Session) -> int:
    """Requeue running jobs whose owner process no longer exists."""
    host = socket.gethostname()
    stale = []
    for job in session.scalars(select(Job).where(Job.state == "running")):
        owner_host, _, pid = (job.owner or "").rpartition(":")
        if owner_host != host or not pid.isdigit() or not _alive(int(pid)) or int(pid) == os.getpid():
            stale.append(job.id)
    release(session, stale)
    return len(stale)


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
