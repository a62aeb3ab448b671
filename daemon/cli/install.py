"""The systemd user unit: ``install-service``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.base import command
from daemon.config import Config

if TYPE_CHECKING:
    pass


def _install_service_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--role",
        choices=("all", "watch", "work"),
        default="all",
        help="all (default): florence-watch.service, one computer doing everything; watch or work: "
        "the template florence-watch@.service, enabled as florence-watch@watch or florence-watch@work",
    )


@command(
    "install-service",
    "Write the systemd user unit; print how to enable it.",
    "florence-watch --config ~/florence-watch/config.toml install-service --role work",
    description="Write the systemd user unit and print the commands that enable it.",
    arguments=_install_service_arguments,
)
def cmd_install_service(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.unit import install

    path, commands = install(str(config_file) if config_file else None, role=args.role)
    print(f"wrote {path}\nenable and start it with:")
    for c in commands:
        print(f"  {c}")
    return 0
