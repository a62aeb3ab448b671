"""Read the index: ``search`` and ``show``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from daemon.cli.base import absolute, add_local_option, answer, command, log, print_json, short
from daemon.config import Config

SEARCH_LANGUAGE = """\
Full-text search over captions, descriptions, OCR text, object labels and paths.

  red car            every word, in any field
  "red car"          a phrase
  caption:"red car"  in one field: caption: desc: text: (OCR) label: path:
  -dog               must not match
  cat OR dog         either"""


def _search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", nargs="?", default="", help="what to look for (see above); may be empty with a filter")
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")
    p.add_argument("--since", metavar="DATE", help="only files modified on or after DATE (YYYY-MM-DD, or 7d)")
    p.add_argument("--has-text", action="store_true", help="only images with OCR text")
    p.add_argument("--limit", type=int, default=20, help="at most this many results (default 20)")
    p.add_argument(
        "--mode",
        choices=("hybrid", "words", "meaning"),
        default="hybrid",
        help="hybrid (default): words and meaning ranked together; words: the words alone; "
        "meaning: nearest in meaning (search.semantic)",
    )
    p.add_argument("--json", action="store_true", help="print JSON: [{path, caption, score, snippet}, ...]")
    add_local_option(p)


@command(
    "search",
    "Search the index by words and by meaning.",
    "florence-watch search 'label:dog -caption:sofa' --folder ~/Pictures/2024 --since 2024-06-01",
    description=SEARCH_LANGUAGE,
    arguments=_search_arguments,
)
def cmd_search(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.results import marked

    payload = {"query": args.query, "folder": absolute(args.folder), "since": args.since, "has_text": args.has_text}
    hits = answer(config, args, "search", {**payload, "limit": args.limit, "mode": args.mode})
    if args.json:
        keys = ("path", "page", "caption", "score")
        print_json([{**{k: h.get(k) for k in keys}, "snippet": marked(h["snippet"])} for h in hits])
    elif not hits:
        print("no matches", file=sys.stderr)
    else:
        bold = ("\x1b[1m", "\x1b[0m") if sys.stdout.isatty() else ("[", "]")
        for h in hits:
            print(h["path"] + (f"  (page {h['page']})" if h.get("page") else ""))
            if h["snippet"] and h["snippet"] != h["caption"]:
                print(f"    {marked(h['snippet'], *bold)}")
            print(f"    {h['caption']}")
    return 0


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an image file")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_local_option(p)


@command(
    "show",
    "Show everything the index knows about one file.",
    "florence-watch show ~/Pictures/Inbox/cat.jpg",
    arguments=_show_arguments,
)
def cmd_show(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    info = answer(config, args, "show", {"path": os.path.abspath(args.path)})
    info["in_file"] = _metadata_now(config, info)
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    _print_file_info(info)
    return 0


def _print_file_info(info: dict[str, Any]) -> None:
    """show's table: what the index knows, then the file's tags now beside what we wrote."""
    target = info["metadata"]["target"]
    rejected = [*info["rejected"], *(f"({field})" for field in info["rejected_fields"])]
    rows = [
        ("path", info["path"]),
        ("state", info["state"] + (f" ({info['error']})" if info["error"] else "")),
        ("sha256", info["sha256"] or "-"),
        ("model", info["model"] or "-"),
        ("caption", info["caption"] or "-"),
        ("description", info["description"] or "-"),
        ("keywords", ", ".join(info["keywords"]) or "-"),
        ("rejected", ", ".join(rejected) + "   (removed by a person: never written again)" if rejected else "-"),
        ("ocr", info["ocr"] or "-"),
        ("objects", "; ".join(f"{o['label']} {o['box']}" for o in info["objects"]) or "-"),
        ("metadata", info["metadata"]["state"] + (f" -> {target}" if target else "")),
    ]
    for key, value in rows:
        print(f"{key:12} {value}")
    for page in info.get("pages", []):  # a document's pages, each as the model read it
        print(f"{'page ' + str(page['page']):12} {page['caption'] or '-'}")
        print(f"{'':12} {short(page['ocr']) if page['ocr'] else '(no text found)'}")
    written = (info["metadata"]["written"] or {}).get("tags", {})
    now = info["in_file"] or {}
    if written or now:
        print("in the file now / what florence-watch wrote:")
        for tag in dict.fromkeys([*now, *written]):
            mark = "" if now.get(tag) == written.get(tag) else "   (differs)" if tag in written else ""
            print(f"  {tag}\n      now:   {short(now.get(tag))}\n      wrote: {short(written.get(tag))}{mark}")


def _metadata_now(config: Config, info: dict[str, Any]) -> dict[str, Any] | None:
    """Our fields as they are in the file (or sidecar) now; None when exiftool is missing."""
    from daemon.errors import MetadataError
    from daemon.metadata import MetadataWriter

    target = info["metadata"]["target"] or info["path"]
    try:
        with MetadataWriter(config.metadata) as writer:
            return writer.read(target)
    except MetadataError as exc:
        log.warning("cannot read the file's metadata: %s", exc)
        return None
