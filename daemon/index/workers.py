"""The workers sharing one index: who they are, and the heartbeat that keeps their claims alive.

Every ``florence-watch run`` (and ``scan``) process is a worker with an id
(host:pid:start, the owner name of its job claims), a role and a device.
Its heartbeat thread renews the leases of the jobs it holds and updates its
row in ``workers``, so ``status`` lists who is working, how fast, and when
each was last heard from. A worker that stops cleanly removes its row; one
that dies stops beating, its leases run out, and its row shows its age.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from daemon.errors import DatabaseError
from daemon.index import jobs
from daemon.index.db import Database, Worker, now, postponed

log = logging.getLogger(__name__)


class Heartbeat:
    """A thread that renews this worker's leases and its ``workers`` row every *lease_s* / 3 seconds."""

    def __init__(self, db: Database, owner: str, role: str, device: str, lease_s: float = jobs.LEASE_S) -> None:
        self.db, self.owner, self.role, self.device, self.lease_s = db, owner, role, device, lease_s
        self.processed = 0  # images stored by this worker; the pipeline counts them
        self._rate = 0.0
        self._last = (time.monotonic(), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    @property
    def rate(self) -> float:
        """Images stored per second, smoothed over the last beats."""
        return self._rate

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        """Renew the leases and the row now."""
        t, n = time.monotonic(), self.processed
        then, before = self._last
        if t - then >= 1.0:
            # Smoothed over beats: one slow batch should not read as a stalled worker.
            self._rate = 0.5 * self._rate + 0.5 * (n - before) / (t - then)
            self._last = (t, n)
        with self.db.transaction(write=True) as s:
            jobs.renew(s, self.owner, self.lease_s)
            _upsert(s, self)

    def stop(self) -> None:
        """Stop beating and remove the row (the leases go when the jobs are finished or released)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            with self.db.transaction(write=True) as s:
                s.execute(delete(Worker).where(Worker.id == self.owner))
        except DatabaseError as exc:
            log.warning("could not remove this worker from the index: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.beat()
            except DatabaseError as exc:  # the server is away: the leases may lapse, nothing else is lost
                postponed(self.db, exc, "heartbeat failed")


def _upsert(s: Session, hb: Heartbeat) -> None:
    row = s.get(Worker, hb.owner)
    if row is None:
        row = Worker(id=hb.owner, host=socket.gethostname(), pid=int(hb.owner.split(":")[-2]), role=hb.role)
        s.add(row)
    row.device, row.images_per_s, row.processed, row.heartbeat = hb.device, round(hb._rate, 2), hb.processed, now()


def forget_dead(session: Session, dead: Callable[[str], bool]) -> int:
    """Remove the rows of workers that are *dead* (processes of this host that are gone); how many.

    Another host's dead worker stays listed, with the age of its last heartbeat: that is news.
    """
    gone = [w for w in session.scalars(select(Worker.id)) if dead(w)]
    if gone:
        session.execute(delete(Worker).where(Worker.id.in_(gone)))
    return len(gone)


def list_workers(session: Session) -> list[dict[str, Any]]:
    """Every worker's row, for ``status``: host, pid, role, device, images/s, last heartbeat and its age."""
    t = now()
    return [
        {
            "host": w.host,
            "pid": w.pid,
            "role": w.role,
            "device": w.device,
            "images_per_s": w.images_per_s,
            "processed": w.processed,
            "heartbeat": w.heartbeat,
            "seconds_since_heartbeat": round(t - w.heartbeat, 1),
        }
        for w in session.scalars(select(Worker).order_by(Worker.host, Worker.pid))
    ]
