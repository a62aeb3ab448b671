"""Take the index elsewhere: ``export`` (COCO, JSON lines) and ``index copy`` (another database)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.base import absolute, command, open_db
from daemon.config import Config, database_url

if TYPE_CHECKING:
    pass


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="the file to write")
    p.add_argument("--format", choices=("coco", "jsonl"), default="coco", help="coco (default) or jsonl")
    p.add_argument(
        "--task",
        default="<OD>",
        help="whose regions: <OD> (default), <DENSE_REGION_CAPTION>, "
        "<REGION_PROPOSAL> or <OCR_WITH_REGION> (aliases work)",
    )
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")


@command(
    "export",
    "Export detections and captions as COCO or JSON lines.",
    "florence-watch export --format coco --task objects dataset.json",
    description="Export the index's detections and captions for training data:\na COCO dataset or JSON lines.",
    arguments=_export_arguments,
)
def cmd_export(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.export import check_task, export
    from daemon.tasks import task_named

    task = task_named(args.task)
    check_task(task)
    folder = absolute(args.folder)
    with open_db(config) as db, db.transaction() as s:
        n = export(s, args.format, Path(args.out), task.token, folder)
    print(f"wrote {n} image(s) to {args.out}", file=sys.stderr)
    return 0


INDEX_COPY_EXAMPLE = "florence-watch index copy --to postgresql+psycopg://florence:secret@nas/florence"
INDEX_COPY_HELP = (
    "Copy the configured index (--database, or index.database) into another, empty\n"
    "database: SQLite to PostgreSQL or back. Images, files, results, search text,\n"
    "the queue and a person's decisions are copied as they are; the model is not run.\n"
    "Then point index.database at the copy."
)


def _index_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, title="actions")
    copy = actions.add_parser(
        "copy",
        help="copy the index into another, empty database",
        description=INDEX_COPY_HELP,
        epilog=f"example: {INDEX_COPY_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument(
        "--to", required=True, metavar="URL", help="the new, empty index: a file path (SQLite) or a PostgreSQL URL"
    )


@command(
    "index",
    "Manage the index: copy it into another database.",
    INDEX_COPY_EXAMPLE,
    description="Manage the index itself.\nflorence-watch index ACTION --help shows an action's own help and example.",
    arguments=_index_arguments,
)
def cmd_index(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.db import Database, display_url
    from daemon.index.transfer import copy_index

    def progress(table: str, rows: int) -> None:
        print(f"copied {table}: {rows} row(s)", file=sys.stderr, flush=True)

    url = database_url(args.to)  # copy is the one action so far (argparse requires it)
    with open_db(config) as source:
        target = Database(url)
        try:
            counts = copy_index(source, target, progress)
        finally:
            target.close()
    print(f"copied {counts['images']} image(s) and {counts['files']} file(s) to {display_url(url)}")
    return 0
