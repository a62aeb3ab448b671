"""What a start-up costs over an unchanged index: the reconcile walk beside a bare walk of the folder.

10,000 image files in 100 folders, all indexed and unchanged; the daemon's
start-up reconcile (``service.reconcile``: one walk, a stat per file, the
index's rows for the folder, the queue's check) is timed side by side with a
bare ``os.walk`` + ``os.stat`` of the same tree, on SQLite and, where a
PostgreSQL server can be started, PostgreSQL. Nothing may be decoded or
hashed: the bench counts both and fails if either happens.

    python bench/reconcile.py              # ~1 min on 2 CPU cores
    python bench/reconcile.py --files 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import daemon.imaging as imaging  # noqa: E402
import daemon.service.pipeline as pipeline  # noqa: E402
from daemon.imaging import Fingerprint  # noqa: E402
from daemon.index.db import Database, File  # noqa: E402
from daemon.service.reconcile import reconcile  # noqa: E402
from daemon.testing.helpers import make_config  # noqa: E402

PNG = (REPO / "../shared/corpus/pillow/hopper.png").resolve()


def _tree(root: Path, n: int) -> list[str]:
    data = PNG.read_bytes() if PNG.exists() else b"\x89PNG\r\n\x1a\n"
    paths = []
    for i in range(n):
        p = root / f"day{i % 100:03d}" / f"img{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def _index(db: Database, paths: list[str]) -> None:
    with db.transaction(write=True) as s:
        for path in paths:
            fp = Fingerprint.of(path)
            s.add(File(path=path, inode=fp.inode, size=fp.size, mtime_ns=fp.mtime_ns, state="indexed"))


def _bare(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(dirpath, name))


def _best(f: Callable[[], Any], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _counting(module: Any, name: str, counts: dict[str, int]) -> None:
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)

    setattr(module, name, counted)


def run(url: str, label: str, root: Path, paths: list[str], tmp: Path) -> None:
    db = Database(url)
    try:
        _index(db, paths)
        config = make_config(tmp, index={"database": url}, watch={"folders": [str(root)]})
        counts: dict[str, int] = {}
        for module in (imaging, pipeline):
            for name in ("decode", "sha256_file", "content_key"):
                if hasattr(module, name):
                    _counting(module, name, counts)
        done = reconcile(db, config, lambda p: pipeline.offer(db, p))
        assert (done.queued, done.removed, done.moved, done.changed) == (0, 0, 0, 0), done
        assert not counts, f"decoded or hashed: {counts}"
        bare = _best(lambda: _bare(root))
        full = _best(lambda: reconcile(db, config, lambda p: pipeline.offer(db, p)))
        print(
            f"{label:10} {len(paths)} unchanged files: reconcile {full:.3f} s, bare walk+stat {bare:.3f} s "
            f"({full / bare:.1f}x); decoded 0, hashed 0"
        )
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-bench-reconcile-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "photos"
        paths = _tree(root, args.files)
        run(f"sqlite:///{tmp / 'index.db'}", "SQLite", root, paths, tmp)
        try:
            from daemon.testing.postgres import Cluster

            cluster = Cluster().start()
        except (RuntimeError, OSError) as exc:
            print(f"PostgreSQL: not measured ({exc})")
            return
        try:
            run(cluster.create_database("bench_reconcile"), "PostgreSQL", root, paths, tmp)
        finally:
            cluster.remove()


if __name__ == "__main__":
    main()
