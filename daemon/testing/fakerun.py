"""The real daemon with a fake model, as its own process: for tests of several workers.

    python -m daemon.testing.fakerun --config FILE --role work --cost 0.1

Everything is the daemon's own (``florence-watch run``: config, database,
watcher, queue, leases, heartbeat, exiftool, signals) except the model:
a FakeAnalyzer that takes *cost* seconds per image (sleeping, as a GPU
leaves the CPU free) and appends one line per batch to ``--log``:
its pid, size, and wall-clock start and end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from daemon.config import load_config
from daemon.results import TaskResults
from daemon.service.runner import Daemon
from daemon.testing.helpers import FakeAnalyzer


class CostlyFake(FakeAnalyzer):
    """FakeAnalyzer that takes *cost* seconds per image and logs each batch's size."""

    def __init__(self, cost: float, log_path: str | None) -> None:
        super().__init__()
        self.cost, self.log_path = cost, log_path

    def analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> list[TaskResults]:
        began = time.time()
        time.sleep(self.cost * len(images))
        results = super().analyze(images, pixels)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()} {len(images)} {began:.3f} {time.time():.3f}\n")
        return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--role", default="all", choices=("all", "watch", "work"))
    p.add_argument("--cost", type=float, default=0.0, help="seconds per image")
    p.add_argument("--log", help="append '<pid> <size> <start> <end>' per batch here")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(message)s", stream=sys.stderr
    )
    daemon = Daemon(load_config(args.config), CostlyFake(args.cost, args.log), role=args.role)
    daemon.install_signal_handlers()
    daemon.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
