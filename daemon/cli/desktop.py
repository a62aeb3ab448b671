"""The desktop's search bars: ``search-provider`` (started by the session bus) and ``open``."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.cli.base import command
from daemon.config import Config


def _provider_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--idle-exit",
        type=float,
        default=600.0,  # desktop.bus.IDLE_S, not imported: the command line stays light
        metavar="S",
        help="give the bus name back after S quiet seconds",
    )


@command(
    "search-provider",
    "Answer GNOME Shell's and KRunner's searches (D-Bus).",
    "florence-watch search-provider",
    description="Own io.github.FlorenceWatch.SearchProvider on the session bus and answer\n"
    "org.gnome.Shell.SearchProvider2 and org.kde.krunner1 from the running daemon's search.\n"
    "The session bus starts it on the first search once `install-service --desktop` ran.",
    arguments=_provider_arguments,
    info_logs=True,
)
def cmd_search_provider(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.desktop.bus import main

    return main(config, config_file, idle_s=args.idle_exit)


def _open_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", nargs="*", help="search for this (default: the newest images)")


@command(
    "open",
    "Open the web page's search in the browser.",
    "florence-watch open red car",
    description="Open the web page's search in the browser, starting `serve` first if nothing\n"
    "answers on its port. The desktop entry runs this, and so does GNOME Shell's 'more results'.",
    arguments=_open_arguments,
)
def cmd_open(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.desktop.answers import query_text
    from daemon.desktop.launch import open_page

    return 0 if open_page(config, str(config_file) if config_file else None, query_text(args.query)) else 1
