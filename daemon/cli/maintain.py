"""Work on the index without Florence-2: ``reindex`` (embeddings) and ``retag`` (metadata)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.base import command, no_such_path, open_db, progress_bar, short
from daemon.config import Config
from daemon.errors import FlorenceWatchError

if TYPE_CHECKING:
    pass


def _reindex_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embeddings",
        action="store_true",
        required=True,
        help="embed the images that have no vector for [search] embedding_model yet (no Florence-2 run)",
    )


@command(
    "reindex",
    "Embed indexed images for search by meaning.",
    "florence-watch reindex --embeddings",
    description="Embed every indexed image that has no vector for the configured embedding model yet\n"
    "(an index made before search by meaning, or after changing search.embedding_model).\n"
    "Florence-2 does not run; a running daemon does the same in the background.",
    arguments=_reindex_arguments,
)
def cmd_reindex(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.vectors import embed_missing
    from daemon.model.embed import Embedder

    embedder = Embedder(config.search.embedding_model)
    with open_db(config) as db, progress_bar() as progress:
        n = embed_missing(db, embedder, progress=progress)
    print(f"embedded {n} image(s) with {embedder.name}", file=sys.stderr)
    return 0


def _retag_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: every indexed file)")
    p.add_argument("--dry-run", action="store_true", help="only print, per file, what would change")


@command(
    "retag",
    "Rewrite metadata from the index, without the model.",
    "florence-watch retag ~/Pictures/Inbox --dry-run",
    description="Rewrite metadata into indexed files from the index, without running the model\n"
    "(after changing the [metadata] settings).",
    arguments=_retag_arguments,
)
def cmd_retag(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.metadata import MetadataWriter, retag

    if not config.metadata.write and not args.dry_run:
        raise FlorenceWatchError(f"{config.source}: metadata.write is false: nothing to retag (try --dry-run)")
    no_such_path(args.paths)
    changed = failed = total = 0
    with MetadataWriter(config.metadata) as writer, open_db(config) as db:
        for path, outcome in retag(db, writer, args.paths, dry_run=args.dry_run):
            total += 1
            if outcome is None:
                failed += 1
                print(f"{path}: not written (florence-watch status shows why)")
                continue
            if outcome.changed:
                changed += 1
                where = "" if outcome.target == path else f" -> {outcome.target}"
                print(f"{path}{where}")
                for tag in outcome.changed:
                    print(f"  {tag}: {short(outcome.before.get(tag))!r} -> {short(outcome.written['tags'].get(tag))!r}")
            for tag in outcome.kept:
                # Under the file's own line when it changed; on a line of its own otherwise.
                print(f"{'  ' if outcome.changed else f'{path}: '}{tag}: kept, a person wrote it")
    verb = "would change" if args.dry_run else "changed"
    print(f"{total} indexed file(s): {changed} {verb}, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _forget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="only list the folders and how many files each holds")


@command(
    "forget-unwatched",
    "Remove the files of unwatched folders from the index.",
    "florence-watch forget-unwatched --dry-run",
    description="Files under a folder taken out of watch.folders are hidden from search and listed by\n"
    "`status`, never removed silently. This removes them from the index (the files on disk are not touched).",
    arguments=_forget_arguments,
)
def cmd_forget_unwatched(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index import folders

    with open_db(config) as db, db.transaction(write=not args.dry_run) as s:
        listed = folders.hidden(s)
        for u in listed:
            print(f"{u['folder']}: {u['files']} file(s)")
        if not args.dry_run:
            n = folders.forget_unwatched(s)
            print(f"removed {n} file(s) from the index", file=sys.stderr)
    if not listed:
        print("no folder that was watched is unwatched now", file=sys.stderr)
    return 0
