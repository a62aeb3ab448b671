"""The ``florence-watch`` command: parse, call one library function, format.

Each command is declared once, with ``@command``: its name, summary line,
own help, example, arguments and run function. The parser and the dispatch
both come from that one registry, ``COMMANDS``.

Errors from the core arrive as ``FlorenceWatchError`` and leave here as one
``error: ...`` line and exit status 1; nothing below prints a traceback at a
person for a problem they can fix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemon import __version__

# Importing a command module registers its commands: this order is the order of the help.
# isort: off
from daemon.cli import run, search, status, pause, doctor, maintain, ask, data, serve, install, desktop  # noqa: F401

# isort: on
from daemon.cli.base import COMMANDS, setup_logging
from daemon.config import find_config_file, load_config
from daemon.errors import FlorenceWatchError


class _CommandListFormatter(argparse.RawDescriptionHelpFormatter):
    """The top-level help, with every command's summary beside its name.

    Before Python 3.13 argparse measured command names two columns short of
    where it prints them, so ``install-service`` pushed its summary onto a line
    of its own. Measure them where they are printed, as 3.13 does.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS:
            for sub in self._iter_indented_subactions(action):  # indented while iterating
                width = len(self._format_action_invocation(sub)) + self._current_indent
                self._action_max_length = max(self._action_max_length, width)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global options, then one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="florence-watch",
        description="Watch folders, describe every new image with Florence-2, keep a searchable\n"
        "index, and write alt text, a description and keywords into each image.",
        epilog="example: florence-watch --config config.toml run\n"
        "florence-watch COMMAND --help shows a command's options and an example.",
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"florence-watch {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $FLORENCE_WATCH_CONFIG, "
        "else ~/.config/florence-watch/config.toml, else built-in defaults)",
    )
    parser.add_argument("--model", metavar="NAME", help="override model.name: a hub id or a local checkpoint folder")
    parser.add_argument("--database", metavar="PATH", help="override index.database: a file path or SQLAlchemy URL")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for c in COMMANDS.values():
        # The summary alone goes in the top-level list; the raw formatter keeps
        # the description's tables as written in the command's own help.
        p = sub.add_parser(
            c.name,
            help=c.summary,
            description=c.help_text(),
            epilog=f"example: {c.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (1 with one ``error:`` line for a problem a person can fix)."""
    args = build_parser().parse_args(argv)
    cmd = COMMANDS[args.command]
    setup_logging(args.verbose, quiet=not cmd.info_logs)
    try:
        config_file = find_config_file(args.config)
        config = load_config(config_file).with_overrides(model=args.model, database=args.database)
        return cmd.run(args, config, config_file)
    except FlorenceWatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
