"""Several workers on one PostgreSQL index: a real server, real daemon processes, a fake model.

Each worker is ``python -m daemon.testing.fakerun``: the daemon's own run
loop, leases, heartbeat and exiftool, with a model that sleeps a fixed
time per image (as a GPU would keep the CPU free).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from daemon.cli import main
from daemon.config import database_url
from daemon.index import jobs, records
from daemon.index.db import Database, File, Job, Result, Worker
from daemon.index.db import Image as ImageRow
from daemon.testing.helpers import REPO, read_tags, variants, wait_until, write_toml


class Workers:
    """Daemon processes started from one folder's config files; all stopped at the end."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.tmp, self.url = tmp_path, url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.db = Database(url)

    def config(self, name: str, **index_keys: Any) -> Path:
        inbox = self.tmp / "inbox"
        return write_toml(
            self.tmp / f"{name}.toml",
            {
                "watch": {"folders": [str(inbox)], "settle_seconds": 0.3},
                "index": {"database": self.url, "lease_seconds": 3, "max_attempts": 1, **index_keys},
                "model": {"batch_size": 4},
                "search": {"semantic": False},
            },
        )

    def start(self, role: str, config: Path, cost: float = 0.0) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{role}-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.testing.fakerun",
                "--config",
                str(config),
                "--role",
                role,
                "--cost",
                str(cost),
                "--log",
                str(self.tmp / "batches.log"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.procs.append(proc)
        return proc

    def registered(self, n: int) -> None:
        assert wait_until(lambda: self.count(Worker) >= n, timeout=60), self.logs()

    def count(self, table: Any, *where: Any) -> int:
        with self.db.transaction() as s:
            return s.scalar(select(func.count()).select_from(table).where(*where)) or 0

    def held_by(self, proc: subprocess.Popen[bytes]) -> list[int]:
        with self.db.transaction() as s:
            return list(s.scalars(select(Job.id).where(Job.owner.like(f"%:{proc.pid}:%"), Job.state == "running")))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.db.close()


@pytest.fixture
def workers(tmp_path: Path, pg_url: str) -> Iterator[Workers]:
    w = Workers(tmp_path, database_url(pg_url))
    yield w
    w.stop()


@pytest.mark.slow
def test_one_watcher_three_workers_one_killed_twice(
    workers: Workers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """300 images at once; every one indexed and tagged exactly once although a worker dies twice mid-batch."""
    cfg = workers.config("all")
    workers.start("watch", cfg)
    crew = [workers.start("work", cfg, cost=0.05) for _ in range(3)]
    workers.registered(4)
    assert main(["--database", workers.url, "status", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["workers"]
    assert sorted(w["role"] for w in listed) == ["watch", "work", "work", "work"]
    assert {w["pid"] for w in listed} == {p.pid for p in workers.procs}
    assert all(w["device"] == "CostlyFake" for w in listed if w["role"] == "work")
    assert all(w["seconds_since_heartbeat"] < 5 and w["host"] for w in listed)
    for p in variants(tmp_path / "stage", 300, size=48):
        shutil.move(p, tmp_path / "inbox" / p.name)

    for _kill in range(2):
        victim = crew[0]
        assert wait_until(lambda v=victim: workers.held_by(v), timeout=60, interval=0.05), workers.logs()
        held = workers.held_by(victim)
        victim.send_signal(signal.SIGKILL)  # mid-batch: its claims are leases nobody renews now
        victim.wait()
        time.sleep(1.5)
        with workers.db.transaction() as s:  # status still lists it, with the age of its last heartbeat
            listed = records.status(s)["workers"]
        dead = [w for w in listed if w["pid"] == victim.pid]
        assert dead and dead[0]["seconds_since_heartbeat"] >= 1.0, (victim.pid, listed)
        # The others take its jobs once the 3-second leases run out, without any restart.
        assert wait_until(lambda v=victim: not workers.held_by(v), timeout=30), workers.logs()
        assert workers.count(Job, Job.id.in_(held), Job.owner.like(f"%:{victim.pid}:%")) == 0
        crew[0] = workers.start("work", cfg, cost=0.05)

    def done() -> bool:
        with workers.db.transaction() as s:
            st = records.status(s)
        return st["indexed"] == 300 and st["pending"] == 0

    assert wait_until(done, timeout=240, interval=0.5), workers.logs()
    assert workers.count(ImageRow) == 300
    assert workers.count(Result) == 300 * 4  # one set of results per image: nothing stored twice
    assert workers.count(File, File.tag_state == "done") == 300
    with workers.db.transaction() as s:
        paths = list(s.scalars(select(File.path)))
    for path in paths[::25]:  # our keyword once, in the file itself
        subject = read_tags(path, "XMP-dc:Subject")["XMP-dc:Subject"]
        assert len(subject) == len(set(subject)) == 1, (path, subject)


@pytest.mark.slow
def test_three_workers_share_the_queue_at_once(workers: Workers, tmp_path: Path) -> None:
    """Three workers on one queue of 96 images each take a share, and all three work at the same moment.

    How much faster that makes them is a figure, not a test: bench/scale.py.
    """
    cfg = workers.config("work")
    cfg.write_text(cfg.read_text().replace("[model]", "[metadata]\nwrite = false\n[model]"))
    files = variants(tmp_path / "stage", 96)
    crew = [workers.start("work", cfg, cost=0.1) for _ in range(3)]
    workers.registered(3)
    with workers.db.transaction(write=True) as s:
        jobs.enqueue(s, map(str, files))
    assert wait_until(lambda: workers.count(Job) == 0, timeout=120, interval=0.05), workers.logs()
    assert workers.count(ImageRow) == len(files)
    batches = [line.split() for line in (tmp_path / "batches.log").read_text().splitlines()]
    done = {p.pid: sum(int(b[1]) for b in batches if int(b[0]) == p.pid) for p in crew}
    assert sum(done.values()) == len(files), done
    assert min(done.values()) >= len(files) // 6, done  # an even share is 32
    edges = sorted([(float(b[2]), 1) for b in batches] + [(float(b[3]), -1) for b in batches])
    at_once = max(itertools.accumulate(step for _, step in edges))
    assert at_once == 3, f"at most {at_once} batches ran at the same moment"
