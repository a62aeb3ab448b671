"""The index's own disk fills up under the running daemon (a real SQLite file on a small tmpfs).

The commit fails as a whole (SQLite's journal), the index passes PRAGMA integrity_check, the daemon
logs one line naming the index and the reason, keeps the work queued, and carries on by itself
once there is room again.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from daemon.config import database_url
from daemon.index.db import Database
from daemon.testing.helpers import wait_until, write_config
from tests.metadata.test_full_disk import _fill
from tests.service.test_e2e import DaemonProcess, status
from tests.service.test_query import _cli


@pytest.fixture
def index_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "index-disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _photos(inbox: Path, names: range) -> None:
    for i in names:
        Image.new("RGB", (48, 48), (9 * i % 256, 40, 200)).save(inbox / f"p{i}.png")


def test_a_full_index_disk_keeps_the_work_queued_and_carries_on_when_there_is_room(
    tmp_path: Path, tiny_model: Path, index_disk: Path
) -> None:
    index = index_disk / "index.db"
    config = write_config(tmp_path, tiny_model, index={"database": str(index)}, metadata={"write": False})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _photos(inbox, range(2))
    db = Database(database_url(str(index)))
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        assert wait_until(lambda: status(db)["indexed"] == 2, timeout=120), daemon.log.read_text()
        full = f"{index}: database or disk is full"

        def said() -> int:
            return daemon.log.read_text().count(full)

        # Full as new files are queued: the watcher keeps them and queues them once there is room.
        filler = _fill(index_disk)
        _photos(inbox, range(2, 20))
        assert wait_until(lambda: said(), timeout=60), daemon.log.read_text()
        time.sleep(3)  # the watcher tries again every second: still one line
        assert said() == 1 and daemon.proc.poll() is None
        assert sqlite3.connect(index).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        filler.unlink()
        assert wait_until(lambda: status(db)["indexed"] == 20, timeout=180), daemon.log.read_text()[-3000:]

        # Full as results are committed: paused, the files are queued; then the disk fills, then resume.
        assert _cli("--config", str(config), "pause").returncode == 0
        _photos(inbox, range(20, 40))
        assert wait_until(lambda: status(db)["queue"]["pending"] == 20, timeout=60)
        filler = _fill(index_disk)
        assert _cli("--config", str(config), "resume").returncode == 0
        assert wait_until(lambda: said() == 2, timeout=60), daemon.log.read_text()[-3000:]
        time.sleep(6)  # another try, another failure: no new line
        assert said() == 2 and daemon.proc.poll() is None and status(db)["indexed"] < 40
        assert sqlite3.connect(index).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        filler.unlink()
        assert wait_until(lambda: status(db)["indexed"] == 40, timeout=180), daemon.log.read_text()[-3000:]
        assert "the index has room again: carrying on" in daemon.log.read_text()
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        db.close()
    assert sqlite3.connect(index).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not [p for p in os.listdir(index_disk) if p != "index.db" and not p.startswith("index.db-")]
    shutil.rmtree(inbox)
