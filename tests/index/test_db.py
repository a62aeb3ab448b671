from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, text

from daemon.errors import DatabaseError
from daemon.index.db import MIGRATIONS, SCHEMA_VERSION, Database, Image, disk_full, postponed
from daemon.testing.helpers import REPO
from daemon.testing.postgres import Cluster


def test_migrations_create_the_schema_once(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/i.db")
    assert db.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    assert {"images", "files", "results", "jobs", "documents", "documents_fts", "schema_migrations"} <= set(
        db.table_names()
    )
    assert db.migrate() == []  # nothing pending the second time
    db.close()
    again = Database(f"sqlite:///{tmp_path}/i.db")
    assert again.migrate() == []
    again.close()


def test_wal_mode_and_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/i.db")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    db.close()


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/i.db")
    with pytest.raises(RuntimeError), db.transaction(write=True) as s:
        s.add(Image(sha256="a" * 64, width=1, height=1))
        s.flush()
        raise RuntimeError("boom")
    with db.transaction() as s:
        assert s.scalars(select(Image)).all() == []
    db.close()


def test_a_reader_does_not_block_a_writer(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/i.db")
    with db.transaction() as reader:
        reader.scalars(select(Image)).all()  # holds a read snapshot open
        with db.transaction(write=True) as writer:
            writer.add(Image(sha256="b" * 64, width=2, height=2))
    with db.transaction() as s:
        assert len(s.scalars(select(Image)).all()) == 1
    db.close()


def test_database_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    # Runs as root too (CI is root): a folder that cannot exist, not a chmod.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseError) as err:
        Database(f"sqlite:///{blocker}/sub/i.db")
    assert str(err.value) == f"index database {blocker}/sub/i.db: cannot create folder {blocker}/sub: Not a directory"


def test_database_that_is_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "i.db").mkdir()
    with pytest.raises(DatabaseError) as err:
        Database(f"sqlite:///{tmp_path}/i.db")
    assert str(err.value).startswith(f"index database {tmp_path}/i.db: unable to open database file")


def test_workers_starting_at_once_on_an_empty_postgresql_database_all_start(postgres: Cluster) -> None:
    """Several processes migrate one new database at once: one migrates, the others wait, none fails."""
    code = "import sys; from daemon.index.db import Database; Database(sys.argv[1]).close()"
    for trial in range(4):
        name = f"race{trial}"
        postgres.drop_database(name)
        url = postgres.create_database(name)
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True, cwd=REPO)
            for _ in range(3)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], errors
        postgres.drop_database(name)


def _full(db: Database) -> DatabaseError:
    """SQLite's own 'database or disk is full', met for real: the file may not grow past its pages."""
    with pytest.raises(DatabaseError) as caught, db.transaction(write=True) as s:
        pages = s.execute(text("PRAGMA page_count")).scalar()
        s.execute(text(f"PRAGMA max_page_count = {pages}"))
        s.add_all(Image(sha256=f"{i:064x}", width=1, height=1) for i in range(5000))
        s.flush()
    assert disk_full(caught.value), caught.value
    return caught.value


def test_a_full_disk_is_told_once_whichever_threads_meet_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(f"sqlite:///{tmp_path}/i.db")
    full, away = _full(db), DatabaseError(str(tmp_path / "i.db"), "unable to open database file")
    caplog.set_level(logging.INFO, logger="daemon.index.db")

    def told(words: str) -> int:
        return sum(words in r.getMessage() for r in caplog.records)

    meet = [threading.Thread(target=postponed, args=(db, full, f"thread {i}")) for i in range(8)]
    for t in meet:
        t.start()
    for t in meet:
        t.join()
    db.full.met(full)  # the main loop, waiting for room
    assert told("database or disk is full") == 1 and told("thread") == 0
    postponed(db, away, "heartbeat failed")  # anything else is its own line, each time
    postponed(db, away, "heartbeat failed")
    assert told("heartbeat failed: ") == 2
    db.full.room()
    db.full.room()  # a batch stored with no outage on says nothing
    assert told("the index has room again") == 1
    postponed(db, full, "heartbeat failed")  # full again: a new outage, a new line
    assert told("database or disk is full") == 2
    db.close()
