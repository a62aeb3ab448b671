"""The ``florence-watch`` command: parse, call one library function, format.

Errors from the core arrive as ``FlorenceWatchError`` and leave here as one
``error: ...`` line and exit status 1; nothing below prints a traceback at a
person for a problem they can fix.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, database_url, find_config_file, load_config
from .errors import FlorenceWatchError, NotIndexedError

log = logging.getLogger("daemon")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="florence-watch",
        description="Watch folders, describe every new image with Florence-2, keep a searchable index, "
        "and write alt text, a description and keywords into each image.",
        epilog="example: florence-watch --config config.toml run",
    )
    parser.add_argument("--version", action="version", version=f"florence-watch {__version__}")
    parser.add_argument("--config", metavar="FILE", help="configuration file (default: $FLORENCE_WATCH_CONFIG, "
                        "else ~/.config/florence-watch/config.toml, else built-in defaults)")
    parser.add_argument("--model", metavar="NAME", help="override model.name: a hub id or a local checkpoint folder")
    parser.add_argument("--database", metavar="PATH", help="override index.database: a file path or SQLAlchemy URL")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    add("run", "Run the daemon in the foreground: watch the folders and process new images until stopped.",
        "florence-watch --config config.toml run")
    p = add("scan", "Process files or folders once (new or changed images only) and exit.",
            "florence-watch scan ~/Pictures/2024")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p = add("search", "Full-text search over captions, descriptions, OCR text, object labels and paths.\n\n"
            '  red car            every word, in any field\n'
            '  "red car"          a phrase\n'
            '  caption:"red car"  in one field: caption: desc: text: (OCR) label: path:\n'
            '  -dog               must not match\n'
            '  cat OR dog         either',
            'florence-watch search \'label:dog -caption:sofa\' --folder ~/Pictures/2024 --since 2024-06-01')
    p.add_argument("query", nargs="?", default="", help="what to look for (see above); may be empty with a filter")
    _search_filters(p)
    p.add_argument("--limit", type=int, default=20, help="at most this many results (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON: [{path, caption, score, snippet}, ...]")
    p = add("show", "Show everything the index knows about one file.", "florence-watch show ~/Pictures/Inbox/cat.jpg")
    p.add_argument("path", help="an image file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("status", "Counts of indexed, pending and failed files, and why each failure failed.",
            "florence-watch status --json")
    p.add_argument("--json", action="store_true", help="print JSON: {indexed, pending, failed, failures}")
    p = add("retag", "Rewrite metadata into indexed files from the index, without running the model "
            "(after changing the [metadata] settings).", "florence-watch retag ~/Pictures/Inbox --dry-run")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: every indexed file)")
    p.add_argument("--dry-run", action="store_true", help="only print, per file, what would change")
    p = add("ask", "Run any Florence-2 task on one image, now (the index is not changed).\n\n" + _task_table(),
            'florence-watch ask photo.jpg ground "a red car" --draw found.png')
    p.add_argument("image", help="an image file")
    p.add_argument("task", help="a task: an alias below or the raw token, e.g. objects or '<OD>'")
    p.add_argument("text", nargs="?", help="the TEXT a task takes (grounding, segmentation, open-vocabulary)")
    p.add_argument("--box", metavar="X1,Y1,X2,Y2", help="the region a region task takes, in pixels")
    p.add_argument("--json", action="store_true", help="print JSON: {image, task, text, box, result}")
    p.add_argument("--draw", metavar="OUT.png", help="also save a copy of the image with the regions drawn on it")
    p = add("find", "Find where something is: search the index for it, then ground the phrase in the best matches.",
            'florence-watch find "a red car" --folder ~/Pictures/2024 --draw-dir /tmp/found')
    p.add_argument("phrase", help="what to look for, in words")
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")
    p.add_argument("--limit", type=int, default=5, help="ground the phrase in this many images (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{path, caption, boxes: [{label, box}]}]")
    p.add_argument("--draw-dir", metavar="DIR", help="save a copy of each image with the boxes drawn on it here")
    p = add("export", "Export the index's detections and captions for training data: a COCO dataset or JSON lines.",
            "florence-watch export --format coco --task objects dataset.json")
    p.add_argument("out", metavar="OUT", help="the file to write")
    p.add_argument("--format", choices=("coco", "jsonl"), default="coco", help="coco (default) or jsonl")
    p.add_argument("--task", default="<OD>", help="whose regions: <OD> (default), <DENSE_REGION_CAPTION>, "
                   "<REGION_PROPOSAL> or <OCR_WITH_REGION> (aliases work)")
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")
    p = add("serve", "Serve the index as a web page on this computer: search, thumbnails, and each image "
            "with its objects and text drawn over it.", "florence-watch serve --port 8765")
    p.add_argument("--host", help="address to listen on (default serve.host: 127.0.0.1, this computer only)")
    p.add_argument("--port", type=int, help="port (default serve.port: 8765)")
    add("install-service", "Write the systemd user unit and print the commands that enable it.",
        "florence-watch --config ~/florence-watch/config.toml install-service")
    return parser


def _task_table() -> str:
    from .tasks import TASKS

    lines = ["tasks (alias, token, input, what it gives):"]
    for t in TASKS:
        takes = {"text": "TEXT", "region": "--box"}.get(t.takes, "")
        lines.append(f"  {t.aliases[0]:<22} {t.token:<36} {takes:<6} {t.about}")
    return "\n".join(lines)


def _search_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")
    p.add_argument("--since", metavar="DATE", help="only files modified on or after DATE (YYYY-MM-DD, or 7d)")
    p.add_argument("--has-text", action="store_true", help="only images with OCR text")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, quiet=args.command not in ("run", "scan"))
    try:
        config_file = find_config_file(args.config)
        config = load_config(config_file).with_overrides(model=args.model, database=args.database)
        return COMMANDS[args.command](args, config, config_file)
    except FlorenceWatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    # Under systemd the journal adds the time; a terminal wants it.
    fmt = "%(levelname)s %(message)s" if os.environ.get("INVOCATION_ID") else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        for noisy in ("transformers", "huggingface_hub", "PIL", "watchdog", "filelock", "urllib3", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


# --- commands -------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .runner import Daemon

    log.info("florence-watch %s, configuration: %s", __version__, config_file or "built-in defaults")
    daemon = Daemon(config)
    daemon.install_signal_handlers()
    daemon.run()
    return 0


def cmd_scan(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .runner import open_pipeline
    from .watch import walk_candidates

    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise FlorenceWatchError(f"{missing[0]}: no such file or folder")
    with open_pipeline(config) as pipeline:
        pipeline.recover()
        queued = pipeline.offer(p for root in args.paths for p in walk_candidates(Path(root).resolve()))
        print(f"{queued} new or changed image(s) to process", file=sys.stderr)
        pipeline.drain(progress=_progress_bar() if sys.stderr.isatty() else None)
    with _db(config).transaction() as s:
        from . import index

        st = index.status(s)
    print(f"indexed {st['indexed']}, failed {st['failed']}, pending {st['pending']}")
    return 0


def cmd_ask(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .analyze import FlorenceAnalyzer
    from .imaging import decode
    from .tasks import ask, check_input, parse_box, task_named

    task = task_named(args.task)
    box = parse_box(args.box) if args.box else None
    decoded = decode(args.image)
    check_input(task, decoded.image.size, args.text, box)  # before the slow model load
    result = ask(FlorenceAnalyzer(config.model), decoded.image, task, args.text, box)
    if args.json:
        print(json.dumps({"image": os.path.abspath(args.image), "task": task.token, "text": args.text,
                          "box": list(box) if box else None, "result": result}, ensure_ascii=False, indent=2))
    else:
        _print_result(result, task.token)
    if args.draw:
        _save_drawing(decoded.image, result, task.token, Path(args.draw))
    return 0


def _print_result(result: Any, task: str) -> None:
    from .draw import shapes

    if isinstance(result, str):
        print(result)
        return
    found = shapes(result, task)
    if not found:
        print("(nothing found)", file=sys.stderr)
    for shape in found:
        coords = ",".join(f"{v:.0f}" for v in shape.points)
        print(f"{shape.label or '(region)'}\t{shape.kind} {coords}")


def _save_drawing(image: Any, result: Any, task: str, out: Path) -> None:
    from .draw import draw, shapes

    found = shapes(result, task)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        draw(image, found).save(out)
    except (OSError, ValueError) as exc:  # ValueError: Pillow does not know the extension
        raise FlorenceWatchError(f"{out}: cannot save the drawing: {exc}") from None
    print(f"drew {len(found)} region(s) on {out}", file=sys.stderr)


def cmd_find(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .analyze import FlorenceAnalyzer
    from .errors import ImageError
    from .imaging import decode
    from .search import Query, Term, parse, search
    from .tasks import ask, task_named

    # Any of the words may match; bm25 puts the images that mention most of them first.
    words = parse(args.phrase, folder=args.folder)
    query = Query(terms=tuple(Term(t.text, t.column, either=True) for t in words.terms if not t.negated),
                  folder=words.folder)
    if not query.terms:
        raise FlorenceWatchError("find needs a phrase with words in it, e.g. \"a red car\"")
    with _db(config).transaction() as s:
        hits = search(s, query, limit=args.limit)
    if not hits:
        print(f"no indexed image mentions {args.phrase!r}", file=sys.stderr)
        return 0
    analyzer = FlorenceAnalyzer(config.model)
    task = task_named("ground")
    found: list[dict[str, Any]] = []
    for rank, hit in enumerate(hits, 1):
        try:
            decoded = decode(hit.path)
        except ImageError as exc:
            print(f"skipped {exc}", file=sys.stderr)  # moved or changed since it was indexed
            continue
        result = ask(analyzer, decoded.image, task, args.phrase)
        boxes = [{"label": lbl, "box": box} for lbl, box in zip(result.get("labels", []), result.get("bboxes", []))]
        found.append({"path": hit.path, "caption": hit.caption, "boxes": boxes})
        if args.draw_dir:
            # Ranked names: the order of the matches, and no clash between photo.jpg and photo.png.
            out = Path(args.draw_dir) / f"{rank:02d}-{Path(hit.path).name}.png"
            _save_drawing(decoded.image, result, task.token, out)
        if not args.json:
            print(hit.path)
            print(f"    {hit.caption}")
            for b in boxes:
                print(f"    {b['label'] or args.phrase}\tbox {','.join(f'{v:.0f}' for v in b['box'])}")
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
    return 0


def cmd_export(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .export import check_task, export
    from .tasks import task_named

    task = task_named(args.task)
    check_task(task)
    folder = os.path.abspath(os.path.expanduser(args.folder)) if args.folder else None
    with _db(config).transaction() as s:
        n = export(s, args.format, Path(args.out), task.token, folder)
    print(f"wrote {n} image(s) to {args.out}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .serve import make_server, url_of

    server = make_server(config, _db(config), args.host, args.port)
    print(f"serving the index at {url_of(server)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _progress_bar() -> Any:
    def show(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r[{'#' * filled}{' ' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def _db(config: Config) -> Any:
    from .db import Database

    return Database(database_url(config.index.database))


def cmd_search(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .search import parse, search

    query = parse(args.query, folder=args.folder, since=args.since, has_text=args.has_text)
    if query.empty:
        raise FlorenceWatchError("nothing to search for: give words, or a filter such as --folder")
    with _db(config).transaction() as s:
        hits = search(s, query, limit=args.limit)
    if args.json:
        print(json.dumps([{"path": h.path, "caption": h.caption, "score": h.score, "snippet": h.snippet_marked()}
                          for h in hits], ensure_ascii=False, indent=2))
    elif not hits:
        print("no matches", file=sys.stderr)
    else:
        bold = ("\x1b[1m", "\x1b[0m") if sys.stdout.isatty() else ("[", "]")
        for h in hits:
            print(h.path)
            if h.snippet and h.snippet != h.caption:
                print(f"    {h.snippet_marked(*bold)}")
            print(f"    {h.caption}")
    return 0


def cmd_show(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from . import index

    path = os.path.abspath(args.path)
    with _db(config).transaction() as s:
        info = index.file_info(s, path)
    if info is None:
        raise NotIndexedError(path)
    info["in_file"] = _metadata_now(config, info)
    if args.json:
        info.pop("results", None)
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    rows = [
        ("path", info["path"]),
        ("state", info["state"] + (f" ({info['error']})" if info["error"] else "")),
        ("sha256", info["sha256"] or "-"),
        ("model", info["model"] or "-"),
        ("caption", info["caption"] or "-"),
        ("description", info["description"] or "-"),
        ("keywords", ", ".join(info["keywords"]) or "-"),
        ("ocr", info["ocr"] or "-"),
        ("objects", "; ".join(f"{o['label']} {o['box']}" for o in info["objects"]) or "-"),
        ("metadata", f"{info['metadata']['state']}" + (f" -> {info['metadata']['target']}"
                                                       if info["metadata"]["target"] else "")),
    ]
    for key, value in rows:
        print(f"{key:12} {value}")
    written = (info["metadata"]["written"] or {}).get("tags", {})
    now = info["in_file"] or {}
    if written or now:
        print("in the file now / what florence-watch wrote:")
        for tag in dict.fromkeys([*now, *written]):
            mark = "" if now.get(tag) == written.get(tag) else "   (differs)" if tag in written else ""
            print(f"  {tag}\n      now:   {_short(now.get(tag))}\n      wrote: {_short(written.get(tag))}{mark}")
    return 0


def _short(value: Any) -> str:
    if value is None:
        return "-"
    text = ", ".join(value) if isinstance(value, list) else str(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _metadata_now(config: Config, info: dict[str, Any]) -> dict[str, Any] | None:
    """Our fields as they are in the file (or sidecar) now; None when exiftool is missing."""
    from .errors import MetadataError
    from .tag import MetadataWriter

    target = info["metadata"]["target"] or info["path"]
    try:
        with MetadataWriter(config.metadata) as writer:
            return writer.read(target)
    except MetadataError as exc:
        log.warning("cannot read the file's metadata: %s", exc)
        return None


def cmd_status(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from . import index

    with _db(config).transaction() as s:
        st = index.status(s)
    if args.json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
        return 0
    print(f"indexed {st['indexed']}   pending {st['pending']}   failed {st['failed']}")
    for f in st["failures"]:
        print(f"  failed: {f['path']}\n          {f['reason']}")
    for f in st["metadata_failures"]:
        print(f"  indexed, {f['reason']}: {f['path']}")
    return 0


def cmd_retag(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .pipeline import retag
    from .tag import MetadataWriter

    if not config.metadata.write and not args.dry_run:
        raise FlorenceWatchError(f"{config.source}: metadata.write is false: nothing to retag (try --dry-run)")
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise FlorenceWatchError(f"{missing[0]}: no such file or folder")
    changed = failed = total = 0
    with MetadataWriter(config.metadata) as writer:
        for path, outcome in retag(_db(config), writer, args.paths, dry_run=args.dry_run):
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
                    print(f"  {tag}: {_short(outcome.before.get(tag))!r} -> "
                          f"{_short(outcome.written['tags'].get(tag))!r}")
            for tag in outcome.kept:
                print(f"  {tag}: kept, a person wrote it" if outcome.changed else f"{path}: {tag}: kept, a person wrote it")
    verb = "would change" if args.dry_run else "changed"
    print(f"{total} indexed file(s): {changed} {verb}, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_install_service(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from .service import install

    path, commands = install(str(config_file) if config_file else None)
    print(f"wrote {path}\nenable and start it with:")
    for c in commands:
        print(f"  {c}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "scan": cmd_scan,
    "search": cmd_search,
    "ask": cmd_ask,
    "find": cmd_find,
    "export": cmd_export,
    "serve": cmd_serve,
    "show": cmd_show,
    "status": cmd_status,
    "retag": cmd_retag,
    "install-service": cmd_install_service,
}
