"""Run the daemon, or process paths once: ``run`` and ``scan``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon import __version__
from daemon.cli.base import command, index_status, log, no_such_path, progress_bar
from daemon.config import Config
from daemon.errors import FlorenceWatchError
from daemon.service.pause import by_hand

if TYPE_CHECKING:
    pass


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--role",
        choices=("all", "watch", "work"),
        default="all",
        help="all (default): watch and process; watch: only watch and queue (no model, e.g. a NAS); "
        "work: only process the queue (several machines sharing one PostgreSQL index)",
    )


@command(
    "run",
    "Run the daemon: watch the folders, process new images.",
    "florence-watch --config config.toml run --role work",
    description="Run the daemon in the foreground: watch the folders and process new images\nuntil stopped.",
    info_logs=True,
    arguments=_run_arguments,
)
def cmd_run(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.runner import Daemon

    log.info("florence-watch %s, configuration: %s", __version__, config_file or "built-in defaults")
    daemon = Daemon(config, role=args.role)
    daemon.install_signal_handlers()
    daemon.run()
    return 0


def _scan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")


@command(
    "scan",
    "Process files or folders once, then exit.",
    "florence-watch scan ~/Pictures/2024",
    description="Process files or folders once (new or changed images only) and exit.",
    arguments=_scan_arguments,
    info_logs=True,
)
def cmd_scan(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.runner import open_pipeline
    from daemon.service.watch import walk_candidates

    no_such_path(args.paths)
    paused = by_hand()
    if paused is not None:  # scan drains the whole queue: the daemon's files too
        raise FlorenceWatchError(f"florence-watch is {paused.describe()} on this computer: resume first")
    with open_pipeline(config) as pipeline:
        pipeline.recover()
        queued = pipeline.offer(p for root in args.paths for p in walk_candidates(Path(root).resolve()))
        print(f"{queued} new or changed image(s) to process", file=sys.stderr)
        with progress_bar() as progress:
            pipeline.drain(progress=progress)
    st = index_status(config)
    print(f"indexed {st['indexed']}, failed {st['failed']}, pending {st['pending']}")
    return 0
