"""Export the index's annotations: a COCO dataset or JSON lines.

For people auto-labelling training data: one task's regions (``<OD>`` by
default) become annotations, with each image's caption alongside. A
document's pages are images of their own there, each with its page number.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon import __version__
from daemon.draw import Shape, shapes
from daemon.errors import FlorenceWatchError
from daemon.files import under
from daemon.index.db import File, Image
from daemon.index.pages import pages_of
from daemon.index.records import results_for
from daemon.results import TaskResults, summarize
from daemon.tasks import Task, region_tasks


def check_task(task: Task) -> None:
    if task.token not in region_tasks():
        raise FlorenceWatchError(
            f"{task.token} is not a task the daemon runs with regions; export one of: {', '.join(region_tasks())}"
        )


@dataclass(frozen=True)
class _Entry:
    """One picture to export: an image, or one page of a document (its regions are in its own pixels)."""

    file: File
    image: Image
    results: TaskResults
    width: int
    height: int
    page: int | None = None


def _entries(session: Session, folder: str | None) -> Iterator[_Entry]:
    query = select(File, Image).join(Image, File.image_id == Image.id).where(File.state == "indexed")
    if folder:
        query = query.where(under(File.path, folder))
    for f, image in session.execute(query.order_by(File.path)):
        model, results = results_for(session, image.id)
        pages = pages_of(session, image.id, model)
        if not pages:
            yield _Entry(f, image, results, image.width, image.height)
        for p in pages:
            yield _Entry(f, image, p.results, p.width, p.height, p.number)


def _coco_box(s: Shape) -> list[float]:
    corners = s.polygon()
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def to_coco(session: Session, task: str = "<OD>", folder: str | None = None) -> dict[str, Any]:
    """The index as one COCO detection dataset (boxes as [x, y, width, height])."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: dict[str, int] = {}
    for image_id, e in enumerate(_entries(session, folder), 1):
        images.append(
            {
                "id": image_id,
                "file_name": e.file.path,
                "width": e.width,
                "height": e.height,
                "caption": summarize(e.results).caption,
                **({"page": e.page} if e.page else {}),
            }
        )
        for s in shapes(e.results.get(task), task):
            label = s.label or "region"
            category = categories.setdefault(label, len(categories) + 1)
            box = _coco_box(s)
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": box,
                "area": round(box[2] * box[3], 2),
                "iscrowd": 0,
            }
            if s.kind == "polygon":
                ann["segmentation"] = [[round(v, 2) for v in s.points]]
            annotations.append(ann)
    return {
        "info": {
            "description": f"florence-watch export of {task}",
            "version": __version__,
            "date_created": dt.datetime.now().isoformat(timespec="seconds"),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in categories.items()],
    }


def write_jsonl(session: Session, out: TextIO, task: str = "<OD>", folder: str | None = None) -> int:
    """One JSON object per indexed image or document page; returns how many were written."""
    n = 0
    for e in _entries(session, folder):
        summary = summarize(e.results)
        regions = [
            {
                "label": s.label,
                "bbox": list(s.points) if s.kind == "box" else _corners(s),
                **({"polygon": list(s.points)} if s.kind == "polygon" else {}),
            }
            for s in shapes(e.results.get(task), task)
        ]
        out.write(
            json.dumps(
                {
                    "path": e.file.path,
                    **({"page": e.page} if e.page else {}),
                    "sha256": e.image.sha256,
                    "width": e.width,
                    "height": e.height,
                    "caption": summary.caption,
                    "description": summary.description,
                    "ocr": summary.ocr,
                    "task": task,
                    "regions": regions,
                },
                ensure_ascii=False,
            )
            + "\n"
        )
        n += 1
    return n


def _corners(s: Shape) -> list[float]:
    x, y, w, h = _coco_box(s)
    return [x, y, round(x + w, 2), round(y + h, 2)]


def export(session: Session, fmt: str, out: Path, task: str = "<OD>", folder: str | None = None) -> int:
    """Write the export to *out*; returns the number of images (a document's pages each count)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            if fmt == "coco":
                data = to_coco(session, task, folder)
                json.dump(data, fh, ensure_ascii=False, indent=1)
                return len(data["images"])
            return write_jsonl(session, fh, task, folder)
    except OSError as exc:
        raise FlorenceWatchError(f"{out}: cannot write the export: {exc.strerror}") from None
