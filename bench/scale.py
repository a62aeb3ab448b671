"""Workers side by side on one PostgreSQL queue: three against one, same images, one run.

Each worker is the daemon's own run loop (``daemon.testing.fakerun``: queue,
leases, heartbeat) with a model that sleeps *cost* seconds per image, as a
GPU leaves the CPU free; metadata writing is off. So the ratio measures how
well claims and leases let workers run at once, not Florence-2's speed.
All processes and the server share this machine's cores.

    python bench/scale.py                 # ~40 s on 2 CPU cores
    python bench/scale.py --images 192 --cost 0.05
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from daemon.index import jobs
from daemon.index.db import Database, Job, Worker
from daemon.testing.helpers import REPO, variants, wait_until, write_toml
from daemon.testing.postgres import Cluster


def _count(db: Database, table: type) -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count()).select_from(table)) or 0


def _rate(db: Database, config: Path, tmp: Path, n: int, images: int, cost: float) -> float:
    """Images per second for *n* workers over *images* new pictures, from queueing to an empty queue."""
    files = variants(tmp / f"stage{n}", images, size=48 + n)  # new pictures for each run
    command = [sys.executable, "-m", "daemon.testing.fakerun", "--config", str(config), "--role", "work"]
    with open(tmp / "workers.log", "ab") as log:
        crew = [
            subprocess.Popen([*command, "--cost", str(cost)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            for _ in range(n)
        ]
    try:
        if not wait_until(lambda: _count(db, Worker) >= n, timeout=60):
            raise SystemExit(f"workers did not start; see {tmp / 'workers.log'}")
        started = time.monotonic()
        with db.transaction(write=True) as s:
            jobs.enqueue(s, map(str, files))
        if not wait_until(lambda: _count(db, Job) == 0, timeout=600, interval=0.05):
            raise SystemExit("the queue did not empty in 10 minutes")
        return len(files) / (time.monotonic() - started)
    finally:
        for p in crew:
            p.send_signal(signal.SIGTERM)
        for p in crew:
            p.wait(timeout=30)
        wait_until(lambda: _count(db, Worker) == 0, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--cost", type=float, default=0.1, help="seconds per image of the fake model")
    args = parser.parse_args()
    try:
        cluster = Cluster().start()
    except (RuntimeError, OSError) as exc:
        print(f"scale: not measured, no PostgreSQL server ({exc})")
        return
    try:
        with tempfile.TemporaryDirectory(prefix="fw-bench-scale-") as tmp_name:
            tmp = Path(tmp_name)
            url = cluster.create_database("bench_scale")
            config = write_toml(
                tmp / "work.toml",
                {
                    "watch": {"folders": [str(tmp / "inbox")], "settle_seconds": 0.3},
                    "index": {"database": url, "lease_seconds": 3, "max_attempts": 1},
                    "metadata": {"write": False},
                    "model": {"batch_size": 4},
                    "search": {"semantic": False},
                },
            )
            db = Database(url)
            try:
                one = _rate(db, config, tmp, 1, args.images, args.cost)
                three = _rate(db, config, tmp, 3, args.images, args.cost)
            finally:
                db.close()
        print(f"scale: 1 worker {one:.1f} images/s, 3 workers {three:.1f} images/s, ratio {three / one:.2f}")
        print(f"       (one worker's ceiling with this fake model: {1 / args.cost:.1f} images/s)")
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
