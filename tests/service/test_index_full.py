"""The index's own disk fills up under the running daemon (a real SQLite file on a small tmpfs).

The commit fails as a whole (SQLite's journal), the index passes PRAGMA integrity_check, the daemon
logs one line naming the index and the reason, keeps the work queued, and carries on by itself
once there is room again.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text

from daemon.config import database_url
from daemon.index.db import Database, display_url
from daemon.testing.helpers import wait_until, write_config
from daemon.testing.postgres import Cluster
from tests.disks import fill, tmpfs
from tests.service.test_e2e import DaemonProcess, status
from tests.service.test_query import _cli


@pytest.fixture
def index_disk(tmp_path: Path) -> Iterator[Path]:
    disk = Path(tempfile.mkdtemp(prefix="fw-index-disk-", dir="/tmp"))  # PostgreSQL's user must reach it
    try:
        with tmpfs(disk, "size=2m"):
            yield disk
    finally:
        disk.rmdir()


@pytest.fixture(params=["sqlite", "postgresql"])
def full_index(request: pytest.FixtureRequest, index_disk: Path) -> Iterator[tuple[str, Path]]:
    """(index URL, the small disk its tables live on): an SQLite file, or a PostgreSQL tablespace."""
    if request.param == "sqlite":
        yield str(index_disk / "index.db"), index_disk
        return
    cluster: Cluster = request.getfixturevalue("postgres")
    space = index_disk / "pg"
    space.mkdir()
    if cluster.user is not None:
        pw = pwd.getpwnam(cluster.user)
        os.chown(space, pw.pw_uid, pw.pw_gid)
    name = "t_index_full"
    cluster.drop_database(name)
    cluster.sql("DROP TABLESPACE IF EXISTS t_small")
    cluster.sql(f"CREATE TABLESPACE t_small LOCATION '{space}'")
    cluster.sql(f'CREATE DATABASE "{name}"')
    # The tables the daemon makes go to the small disk; the database's own folder (its catalogue,
    # written as a connection starts) stays where it was: a full tablespace, not a full server.
    cluster.sql(f'ALTER DATABASE "{name}" SET default_tablespace = t_small')
    try:
        yield cluster.url(name), index_disk
    finally:
        cluster.drop_database(name)
        cluster.sql("DROP TABLESPACE IF EXISTS t_small")


ROOM = "the index has room again: carrying on"


def _intact(url: str) -> bool:
    """SQLite's PRAGMA integrity_check; on PostgreSQL, every file row's documents and jobs readable."""
    if not url.startswith("postgresql"):
        return sqlite3.connect(url).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db = Database(url)
    try:
        with db.transaction() as s:
            s.execute(text("SELECT count(*) FROM files f LEFT JOIN documents d ON d.file_id = f.id"))
            s.execute(text("SELECT count(*) FROM jobs"))
        return True
    finally:
        db.close()


def _photos(inbox: Path, names: range) -> None:
    for i in names:
        Image.new("RGB", (48, 48), (9 * i % 256, 40, 200)).save(inbox / f"p{i}.png")


def test_a_full_index_disk_keeps_the_work_queued_and_carries_on_when_there_is_room(
    tmp_path: Path, tiny_model: Path, full_index: tuple[str, Path]
) -> None:
    index, index_disk = full_index
    config = write_config(tmp_path, tiny_model, index={"database": index}, metadata={"write": False})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _photos(inbox, range(2))
    db = Database(database_url(index))
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        assert wait_until(lambda: status(db)["indexed"] == 2, timeout=120), daemon.log.read_text()
        words = "could not extend file" if index.startswith("postgresql") else "database or disk is full"
        full = f"{display_url(database_url(index))}: {words}"  # the index, and the server's own words

        def said() -> int:
            return daemon.log.read_text().count(full)

        def one_line_each() -> bool:
            """No outage is told twice: between two lines naming it, a line saying it ended.

            An outage may end without us freeing anything: PostgreSQL's autovacuum (or SQLite's
            freelist) makes room inside the index's own pages, a commit fits, and the next one
            that needs a new page starts a second outage, with a line of its own.
            """
            told = [line for line in daemon.log.read_text().splitlines() if full in line or ROOM in line]
            return all(not (full in a and full in b) for a, b in itertools.pairwise(told))

        # Full as new files are queued: the watcher keeps them and queues them once there is room.
        filler = fill(index_disk)
        _photos(inbox, range(2, 20))
        assert wait_until(lambda: said(), timeout=60), daemon.log.read_text()
        time.sleep(3)  # the watcher tries again every second: still one line
        assert one_line_each() and daemon.proc.poll() is None, daemon.log.read_text()[-6000:]
        assert _intact(index)
        filler.unlink()
        assert wait_until(lambda: status(db)["indexed"] == 20, timeout=180), daemon.log.read_text()[-3000:]

        # Full as results are committed: paused, the files are queued; then the disk fills, then resume.
        assert _cli("--config", str(config), "pause").returncode == 0
        _photos(inbox, range(20, 40))
        assert wait_until(lambda: status(db)["queue"]["pending"] == 20, timeout=60)
        filler = fill(index_disk)
        assert _cli("--config", str(config), "resume").returncode == 0
        before = said()
        assert wait_until(lambda: said() > before, timeout=60), daemon.log.read_text()[-3000:]
        time.sleep(6)  # another try, another failure: no new line
        assert one_line_each() and daemon.proc.poll() is None, daemon.log.read_text()[-6000:]
        assert status(db)["indexed"] < 40
        assert _intact(index)
        filler.unlink()
        assert wait_until(lambda: status(db)["indexed"] == 40, timeout=180), daemon.log.read_text()[-3000:]
        assert ROOM in daemon.log.read_text() and one_line_each()
        assert "is the server running" not in daemon.log.read_text()  # it is: its disk is full
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        db.close()
    assert _intact(index)
    if not index.startswith("postgresql"):
        assert not [p for p in os.listdir(index_disk) if p != "index.db" and not p.startswith("index.db-")]
    shutil.rmtree(inbox)
