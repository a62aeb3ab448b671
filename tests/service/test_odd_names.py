"""A file whose name is not UTF-8 (Latin-1 from an old camera card or a Windows share).

Neither SQLite nor PostgreSQL can hold such a path as text: the file is left
alone with one ERROR line that names it (undecodable bytes shown as U+FFFD)
and the fix, and the daemon goes on with the others. Before, the start-up
scan raised UnicodeEncodeError and the daemon died.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from daemon.config import database_url
from daemon.index import records
from daemon.index.db import Database
from daemon.testing.helpers import REPO, PipelineFactory, make_config, wait_until, write_toml

LATIN1 = b"caf\xe9 cr\xe8me.png"


def _latin1_file(folder: Path) -> str:
    path = os.fsdecode(bytes(folder) + b"/" + LATIN1)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path, "PNG")
    return path


def test_a_name_that_is_not_utf8_is_skipped_with_one_line_and_the_rest_indexed(
    tmp_path: Path, database: str, open_test_pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    odd = _latin1_file(inbox)
    Image.new("RGB", (32, 32), (10, 200, 10)).save(inbox / "fine.png")
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": database}, metadata={"write": False}))
    with caplog.at_level(logging.ERROR):
        for _ in range(2):  # a second scan of the folder says nothing new
            pipeline.offer([odd, inbox / "fine.png"])
            pipeline.drain()
        pipeline.forget(odd)  # a delete event for it: nothing to do, nothing raised
    with pipeline.db.transaction() as s:
        st = records.status(s)
    assert st["indexed"] == 1 and st["failed"] == 0, st
    lines = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert lines == [
        f"skipped {inbox}/café crème.png".replace("é", "\ufffd").replace("è", "\ufffd")
        + ": its name is not UTF-8, which the index cannot hold; rename it "
        "(convmv -f latin1 -t utf8 --notest FILE renames from Latin-1)"
    ]
    assert os.path.exists(odd)  # left as it was


@pytest.mark.slow
def test_the_daemon_starts_and_watches_beside_such_a_file(tmp_path: Path) -> None:
    """The real daemon (fake model): start-up scan and a live event, both with a Latin-1 name."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _latin1_file(inbox)
    Image.new("RGB", (32, 32), (10, 10, 200)).save(inbox / "first.png")
    index = tmp_path / "index.db"
    cfg = write_toml(
        tmp_path / "config.toml",
        {
            "watch": {"folders": [str(inbox)], "settle_seconds": 0.3},
            "index": {"database": str(index)},
            "metadata": {"write": False},
            "search": {"semantic": False},
        },
    )
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.testing.fakerun", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    db = Database(database_url(str(index)))
    try:

        def indexed() -> int:
            if proc.poll() is not None:
                return -1
            with db.transaction() as s:
                return int(records.status(s)["indexed"])

        assert wait_until(lambda: indexed() == 1, timeout=60), log.read_text()[-3000:]
        os.rename(os.fsdecode(bytes(inbox) + b"/" + LATIN1), os.fsdecode(bytes(inbox) + b"/moved \xe9.png"))
        Image.new("RGB", (32, 32), (10, 100, 200)).save(inbox / "second.png")
        assert wait_until(lambda: indexed() == 2, timeout=60), log.read_text()[-3000:]
        assert proc.poll() is None
        text = log.read_text()
        assert "skipped" in text and "Traceback" not in text, text[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        db.close()
