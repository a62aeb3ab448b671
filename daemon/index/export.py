"""Export the index's annotations: a COCO dataset or JSON lines.

For people auto-labelling training data: one task's regions (``<OD>`` by
default) become annotations, with each image's caption alongside.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon import __version__
from daemon.draw import Shape, shapes
from daemon.errors import FlorenceWatchError
from daemon.files import under
from daemon.index.db import File, Image
from daemon.index.records import results_for
from daemon.results import summarize
from daemon.tasks import Task, region_tasks


def check_task(task: Task) -> None:
    if task.token not in region_tasks():
        raise FlorenceWatchError(
            f"{task.token} is not a task the daemon runs with regions; export one of: {', '.join(region_tasks())}"
        )


def _entries(session: Session, folder: str | None) -> Iterator[tuple[File, Image, dict[str, Any]]]:
    query = select(File, Image).join(Image, File.image_id == Image.id).where(File.state == "indexed")
    if folder:
        query = query.where(under(File.path, folder))
    for f, image in session.execute(query.order_by(File.path)):
        yield f, image, results_for(session, image.id)[1]


def _coco_box(s: Shape) -> list[float]:
    corners = s.polygon()
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def to_coco(session: Session, task: str = "<OD>", folder: str | None = None) -> dict[str, Any]:
    """The index as one COCO detection dataset (boxes as [x, y, width, height])."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: dict[str, int] = {}
    for image_id, (f, image, results) in enumerate(_entries(session, folder), 1):
        images.append(
            {
                "id": image_id,
                "file_name": f.path,
                "width": image.width,
                "height": image.height,
                "caption": summarize(results).caption,
            }
        )
        for s in shapes(results.get(task), task):
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
    """One JSON object per indexed file; returns how many were written."""
    n = 0
    for f, image, results in _entries(session, folder):
        summary = summarize(results)
        regions = [
            {
                "label": s.label,
                "bbox": list(s.points) if s.kind == "box" else _corners(s),
                **({"polygon": list(s.points)} if s.kind == "polygon" else {}),
            }
            for s in shapes(results.get(task), task)
        ]
        out.write(
            json.dumps(
                {
                    "path": f.path,
                    "sha256": image.sha256,
                    "width": image.width,
                    "height": image.height,
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
    """Write the export to *out*; returns the number of images."""
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
