"""Pause the daemon on this computer and resume it: ``pause`` and ``resume``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.base import command, no_arguments
from daemon.config import Config
from daemon.service.pause import Pauser, parse_duration, pause, resume, state_file

if TYPE_CHECKING:
    pass


def _pause_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 2h, 30m, 1h30m (default: until resume)")


@command(
    "pause",
    "Pause the daemon on this computer (for a game, a call).",
    "florence-watch pause --for 2h",
    description="The daemon on this computer keeps watching and queueing new files, but runs no model,\n"
    "writes no file and gives its model's memory back, until `florence-watch resume` or --for\n"
    "runs out. The pause outlives a restart; `status` shows it.",
    arguments=_pause_arguments,
)
def cmd_pause(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    paused = pause(parse_duration(args.duration) if args.duration is not None else None)
    print(f"{paused.describe()}: new files are queued, and described once it is over")
    print(f"(the daemon reads the pause from {state_file()})", file=sys.stderr)
    return 0


@command(
    "resume",
    "End a pause made with `pause`.",
    "florence-watch resume",
    description="End a pause made with `florence-watch pause`; the daemon carries on within a second.\n"
    "A pause by rule ([pause] on_battery, gpu_share) lasts while its condition holds.",
    arguments=no_arguments,
)
def cmd_resume(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    print("resumed" if resume() else "was not paused by hand")
    # The battery rule only: which GPU memory is the daemon's own, only the index knows (status says).
    rule = Pauser(config.pause, gpu_share=lambda: None).check()
    if rule is not None:
        print(f"still {rule.describe()} ([pause] in {config_file or 'the configuration'})")
    return 0
