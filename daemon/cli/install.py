"""The systemd user unit and the desktop search pieces: ``install-service``."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.cli.base import command
from daemon.config import Config


def _install_service_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--role",
        choices=("all", "watch", "work"),
        default="all",
        help="all (default): florence-watch.service, one computer doing everything; watch or work: "
        "the template florence-watch@.service, enabled as florence-watch@watch or florence-watch@work",
    )
    p.add_argument(
        "--desktop",
        action="store_true",
        help="instead: the search in GNOME Shell's overview and KRunner (D-Bus activation file, "
        ".desktop entry, KRunner plugin, GNOME key file), all under ~/.local/share",
    )
    p.add_argument("--remove", action="store_true", help="take away what the same command without it installs")


@command(
    "install-service",
    "Write the systemd user unit, or the desktop search.",
    "florence-watch --config ~/florence-watch/config.toml install-service --desktop",
    description="Write the systemd user unit and print the commands that enable it; with --desktop,\n"
    "the files that put florence-watch's search in GNOME Shell's overview and KRunner.\n"
    "--remove takes either away again.",
    arguments=_install_service_arguments,
)
def cmd_install_service(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.unit import current_argv, install, remove

    config_path = str(config_file) if config_file else None
    if args.desktop:
        from daemon.desktop import files

        if args.remove:
            paths, todo = files.remove()
            print("\n".join(f"removed {p}" for p in paths) or "the desktop search was not installed")
        else:
            paths, todo = files.install(current_argv(config_path))
            print("\n".join(f"wrote {p}" for p in paths))
        for line in todo:
            print(f"  {line}")
        return 0
    if args.remove:
        path, commands = remove(role=args.role)
        if path is None:
            print("no such unit was installed")
            return 0
        print(f"removed {path} and its enablement; stop what runs and tell systemd with:")
    else:
        path, commands = install(config_path, role=args.role)
        print(f"wrote {path}\nenable and start it with:")
    for c in commands:
        print(f"  {c}")
    return 0
