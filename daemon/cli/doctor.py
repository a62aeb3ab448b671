"""Check this computer: ``doctor``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.base import command, print_json
from daemon.config import Config

if TYPE_CHECKING:
    pass


def _doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON: {ok, checks: [{name, ok, state, detail, fix}]}")


@command(
    "doctor",
    "Check that this computer is ready to run florence-watch.",
    "florence-watch --config ~/florence-watch/config.toml doctor",
    description="Check what florence-watch needs and say how to fix what is wrong: exiftool;\n"
    "Python, torch and transformers; the GPU; the model on disk (nothing is downloaded);\n"
    "inotify limits; each watched folder; the index; the systemd unit; the web port; the desktop\n"
    "search's files (D-Bus activation, .desktop entry, KRunner plugin, GNOME key file).\n"
    "Exit status 0 when all is well (notes are fine), 1 when a check failed.",
    arguments=_doctor_arguments,
)
def cmd_doctor(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.desktop import files
    from daemon.service.doctor import diagnose
    from daemon.service.unit import current_argv

    argv = current_argv(str(config_file) if config_file else None)
    report = diagnose(config, more=[("desktop search", lambda ctx: files.checks(argv))])
    if args.json:
        print_json(report.as_dict())
        return 0 if report.ok else 1
    print(f"configuration: {config_file or 'built-in defaults'}")
    for c in report.checks:
        print(f"{c.state.upper() if c.state == 'fail' else c.state:4}  {c.name:15}  {c.detail}")
        if c.fix:
            print(f"{'':23}{'fix' if c.state == 'fail' else 'to do'}: {c.fix}")
    failed = sum(not c.ok for c in report.checks)
    print("all is well" if not failed else f"{failed} problem(s) found")
    return 0 if report.ok else 1
