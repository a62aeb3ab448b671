"""Run Florence-2 now: ``ask`` (any task on one image) and ``find`` (ground a phrase in search hits)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from daemon.cli.base import absolute, add_local_option, answer, command, print_json
from daemon.config import Config
from daemon.errors import FlorenceWatchError

# Loading Florence-2 and running it on the CPU can take minutes; a daemon that takes longer is stuck.
MODEL_TIMEOUT_S = 600.0


def _task_table() -> str:
    """ask's own help: what it does, then one row per task."""
    from daemon.tasks import TASKS

    lines = [
        "Run any Florence-2 task on one image, now (the index is not changed).",
        "",
        "tasks (alias, token, input, what it gives):",
    ]
    for t in TASKS:
        takes = {"text": "TEXT", "region": "--box"}.get(t.takes, "")
        lines.append(f"  {t.aliases[0]:<22} {t.token:<36} {takes:<6} {t.about}")
    return "\n".join(lines)


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="an image file")
    p.add_argument("task", help="a task: an alias below or the raw token, e.g. objects or '<OD>'")
    p.add_argument("text", nargs="?", help="the TEXT a task takes (grounding, segmentation, open-vocabulary)")
    p.add_argument("--box", metavar="X1,Y1,X2,Y2", help="the region a region task takes, in pixels")
    p.add_argument("--json", action="store_true", help="print JSON: {image, task, text, box, result}")
    p.add_argument("--draw", metavar="OUT.png", help="also save a copy of the image with the regions drawn on it")
    add_local_option(p)


@command(
    "ask",
    "Run any Florence-2 task on one image, now.",
    'florence-watch ask photo.jpg ground "a red car" --draw found.png',
    description=_task_table,
    arguments=_ask_arguments,
)
def cmd_ask(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.imaging import decode
    from daemon.tasks import check_input, parse_box, task_named

    task = task_named(args.task)
    box = parse_box(args.box) if args.box else None
    decoded = decode(args.image)
    check_input(task, decoded.image.size, args.text, box)  # before the slow model load
    payload = {"image": os.path.abspath(args.image), "task": task.token, "text": args.text}
    result = answer(config, args, "ask", {**payload, "box": list(box) if box else None}, timeout=MODEL_TIMEOUT_S)
    if args.json:
        print_json(
            {
                "image": os.path.abspath(args.image),
                "task": task.token,
                "text": args.text,
                "box": list(box) if box else None,
                "result": result,
            }
        )
    else:
        _print_result(result, task.token)
    if args.draw:
        _save_drawing(decoded.image, result, task.token, Path(args.draw))
    return 0


def _print_result(result: Any, task: str) -> None:
    """A task's result as text: a caption as is, regions one per line."""
    from daemon.draw import shapes

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
    """Save a copy of *image* with *result*'s regions drawn on it."""
    from daemon.draw import draw, shapes

    found = shapes(result, task)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        draw(image, found).save(out)
    except (OSError, ValueError) as exc:  # ValueError: Pillow does not know the extension
        raise FlorenceWatchError(f"{out}: cannot save the drawing: {exc}") from None
    print(f"drew {len(found)} region(s) on {out}", file=sys.stderr)


def _find_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("phrase", help="what to look for, in words")
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")
    p.add_argument("--limit", type=int, default=5, help="ground the phrase in this many images (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{path, caption, boxes: [{label, box}]}]")
    p.add_argument("--draw-dir", metavar="DIR", help="save a copy of each image with the boxes drawn on it here")
    add_local_option(p)


@command(
    "find",
    "Find where something is in the indexed images.",
    'florence-watch find "a red car" --folder ~/Pictures/2024 --draw-dir /tmp/found',
    description="Find where something is: search the index for it, then ground the phrase\nin the best matches.",
    arguments=_find_arguments,
)
def cmd_find(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    payload = {"phrase": args.phrase, "folder": absolute(args.folder), "limit": args.limit}
    matches = answer(config, args, "find", payload, timeout=MODEL_TIMEOUT_S)
    found: list[dict[str, Any]] = []
    for match in matches:
        if match["skipped"]:
            print(f"skipped {match['path']}: {match['skipped']}", file=sys.stderr)  # moved or changed since indexed
            continue
        found.append({k: match[k] for k in ("path", "caption", "boxes")})
        if args.draw_dir:
            from daemon.imaging import decode

            # Ranked names: the order of the matches, and no clash between photo.jpg and photo.png.
            out = Path(args.draw_dir) / f"{match['rank']:02d}-{Path(match['path']).name}.png"
            _save_drawing(decode(match["path"]).image, match["result"], match["task"], out)
        if not args.json:
            _print_found(match, args.phrase)
    if not matches:
        print(f"no indexed image mentions {args.phrase!r}", file=sys.stderr)
    elif args.json:
        print_json(found)
    return 0


def _print_found(match: dict[str, Any], phrase: str) -> None:
    """One grounded match: its path, caption, and each box found."""
    print(match["path"])
    print(f"    {match['caption']}")
    for b in match["boxes"]:
        print(f"    {b['label'] or phrase}\tbox {','.join(f'{v:.0f}' for v in b['box'])}")
