from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.config import database_url
from daemon.index import jobs
from daemon.index.db import Database, Job


def db_at(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path}/i.db")


@pytest.fixture
def db(database: str) -> Iterator[Database]:
    """The queue on each backend: an SQLite file, then a PostgreSQL database."""
    d = Database(database_url(database))
    yield d
    d.close()


def test_enqueue_claim_finish(db: Database) -> None:
    with db.transaction(write=True) as s:
        assert jobs.enqueue(s, ["/a.jpg", "/b.jpg", "/a.jpg"]) == 2
    with db.transaction(write=True) as s:
        claimed = jobs.claim(s, 10, "me:1")
        assert [j.path for j in claimed] == ["/a.jpg", "/b.jpg"]
        ids = [j.id for j in claimed]
    with db.transaction(write=True) as s:
        assert jobs.claim(s, 10) == []  # nothing left pending
        jobs.finish(s, ids[0])
    with db.transaction() as s:
        assert jobs.counts(s) == {"running": 1}
    db.close()


def test_failures_retry_with_backoff_then_give_up(db: Database) -> None:
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/x.jpg"])
        [job] = jobs.claim(s, 1)
        assert jobs.fail(s, job.id, "bad", max_attempts=2) is False
    with db.transaction(write=True) as s:
        assert jobs.claim(s, 1) == []  # not due yet (backoff)
        job = s.scalars(select(Job)).one()
        assert (job.state, job.attempts, job.error) == ("pending", 1, "bad")
        assert jobs.fail(s, job.id, "still bad", max_attempts=2) is True
        assert s.get(Job, job.id).state == "failed"
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/x.jpg"])  # a new event for the file retries it from scratch
        job = s.scalars(select(Job)).one()
        assert (job.state, job.attempts, job.not_before) == ("pending", 0, 0.0)
    db.close()


def test_recover_requeues_jobs_of_dead_processes_only(db: Database) -> None:
    import socket

    host = socket.gethostname()
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/dead.jpg", "/alive.jpg"])
        dead, alive = jobs.claim(s, 2)
        dead.owner = f"{host}:{2**22 + 12345}"  # no such pid
        alive.owner = f"{host}:{os.getppid()}"  # the test runner's parent: alive
    with db.transaction(write=True) as s:
        assert jobs.recover(s) == 1
        states = {j.path: j.state for j in s.scalars(select(Job))}
    assert states == {"/dead.jpg": "pending", "/alive.jpg": "running"}
    db.close()


def test_a_file_that_changes_while_its_job_runs_is_processed_again(db: Database) -> None:
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/x.jpg"])
        [job] = jobs.claim(s, 1)
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/x.jpg"])  # an event while it runs
    with db.transaction(write=True) as s:
        jobs.finish(s, job.id)
    with db.transaction(write=True) as s:
        [again] = jobs.claim(s, 1)
        assert again.path == "/x.jpg" and not again.dirty
        jobs.finish(s, again.id)
    with db.transaction() as s:
        assert jobs.counts(s) == {}
    db.close()


def test_migration_adds_the_column_to_an_old_database(tmp_path: Path) -> None:
    import sqlite3

    from daemon.index.db import SCHEMA_VERSION

    db = db_at(tmp_path)
    db.close()
    # Make it look like a database from before 0003: no dirty column, not recorded.
    con = sqlite3.connect(tmp_path / "i.db")
    con.execute("ALTER TABLE jobs DROP COLUMN dirty")
    con.execute("DELETE FROM schema_migrations WHERE name = '0003_jobs_dirty'")
    con.commit()
    con.close()
    db = db_at(tmp_path)
    assert db.schema_version() == SCHEMA_VERSION
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/y.jpg"])
        assert s.scalars(select(Job)).one().dirty is False
    db.close()


def test_a_lease_runs_out_and_any_worker_takes_the_job(db: Database) -> None:
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/a.jpg"])
        [job] = jobs.claim(s, 1, "host-a:1:1", lease_s=0.2)
    with db.transaction(write=True) as s:
        assert jobs.claim(s, 1, "host-b:2:2") == []  # still host-a's
        assert jobs.renew(s, "host-a:1:1", lease_s=0.2) == 1  # its heartbeat
    time.sleep(0.3)  # host-a vanished: no more heartbeats
    with db.transaction(write=True) as s:
        [taken] = jobs.claim(s, 1, "host-b:2:2")
        assert (taken.id, taken.owner) == (job.id, "host-b:2:2")
    with db.transaction(write=True) as s:
        assert jobs.owned(s, [job.id], "host-a:1:1") == set()  # host-a, back, must not store it too
        assert jobs.owned(s, [job.id], "host-b:2:2") == {job.id}


def test_workers_claiming_at_once_never_share_a_job(db: Database) -> None:
    with db.transaction(write=True) as s:
        jobs.enqueue(s, [f"/{i}.jpg" for i in range(200)])
    claimed: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        mine = claimed.setdefault(name, [])
        own = Database(db.url)  # its own connections and locks, as another process has
        try:
            while True:
                with own.transaction(write=True) as s:
                    batch = [j.id for j in jobs.claim(s, 7, name)]
                    time.sleep(0.01)  # hold the claim open a moment, as a slower worker would
                if not batch:
                    return
                mine += batch
        finally:
            own.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}:{i}:0",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [j for ids in claimed.values() for j in ids]
    assert len(every) == len(set(every)) == 200


def test_one_writer_per_file_at_a_time(db: Database) -> None:
    """Metadata-write claims: a file another worker is writing is not written by a second one."""
    from daemon.index import records
    from daemon.index.db import File

    with db.transaction(write=True) as s:
        s.add_all([File(path="/a.jpg", state="indexed"), File(path="/b.jpg", state="indexed")])
    with db.transaction() as s:
        a, b = sorted(s.scalars(select(File.id)))
    with db.transaction(write=True) as s:
        assert records.claim_tags(s, [a], "w1:1:1", lease_s=0.3) == {a}
    with db.transaction(write=True) as s:
        assert records.claim_tags(s, [a, b], "w2:2:2", lease_s=30) == {b}  # a is w1's
    with db.transaction(write=True) as s:
        records.release_tags(s, [a], "w2:2:2")  # not w2's to release
        assert records.claim_tags(s, [a], "w2:2:2", lease_s=30) == set()
    time.sleep(0.4)  # w1 died mid-write: its claim runs out
    with db.transaction(write=True) as s:
        assert records.claim_tags(s, [a], "w2:2:2", lease_s=30) == {a}
    with db.transaction(write=True) as s:
        records.release_tags(s, [a, b], "w2:2:2")
        assert records.claim_tags(s, [a, b], "w1:1:1", lease_s=30) == {a, b}
