"""export: COCO and JSON lines from a real index (fake model here; the tiny model's twin is in test_tasks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import FlorenceWatchError
from daemon.index.db import Database
from daemon.index.export import check_task, export, to_coco
from daemon.service.watch import walk_candidates
from daemon.tasks import task_named
from daemon.testing.helpers import PipelineFactory, copy_corpus, make_config


def validate_coco(data: dict[str, Any]) -> None:
    """The parts of the COCO detection format that loaders (pycocotools, torchvision, fiftyone) rely on."""
    assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
    image_ids = [im["id"] for im in data["images"]]
    assert len(set(image_ids)) == len(image_ids)
    for im in data["images"]:
        assert isinstance(im["id"], int) and isinstance(im["file_name"], str)
        assert isinstance(im["width"], int) and im["width"] > 0 and isinstance(im["height"], int) and im["height"] > 0
    category_ids = {c["id"] for c in data["categories"]}
    assert len(category_ids) == len(data["categories"])
    assert all(isinstance(c["name"], str) and c["name"] for c in data["categories"])
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for a in data["annotations"]:
        assert a["image_id"] in sizes and a["category_id"] in category_ids and a["iscrowd"] in (0, 1)
        x, y, w, h = a["bbox"]
        assert w >= 0 and h >= 0 and a["area"] == pytest.approx(w * h, abs=0.01)
        width, height = sizes[a["image_id"]]
        assert -1 <= x <= width + 1 and -1 <= y <= height + 1
        for poly in a.get("segmentation", []):
            assert len(poly) >= 6 and len(poly) % 2 == 0


@pytest.fixture
def indexed(tmp_path: Path, open_test_pipeline: PipelineFactory) -> tuple[Database, list[Path]]:
    """Three corpus images indexed by the fake model; the database stays open until the test ends."""
    config = make_config(tmp_path, metadata={"write": False})
    files = copy_corpus(["pillow/hopper.jpg", "pillow/hopper.png", "exiftool/MWG.jpg"], tmp_path / "inbox")
    pipeline = open_test_pipeline(config)
    pipeline.offer(walk_candidates(tmp_path / "inbox"))
    pipeline.drain()
    return pipeline.db, files


def test_coco_export_loads_back_and_holds_every_detection(indexed: tuple[Database, list[Path]], tmp_path: Path) -> None:
    db, files = indexed
    out = tmp_path / "out" / "coco.json"
    with db.transaction() as s:
        assert export(s, "coco", out, "<OD>") == 3
    data = json.loads(out.read_text(encoding="utf-8"))
    validate_coco(data)
    assert sorted(im["file_name"] for im in data["images"]) == sorted(map(str, files))
    assert len(data["annotations"]) == 3  # the fake model finds one object per image
    hopper = next(im for im in data["images"] if im["file_name"].endswith("hopper.jpg"))
    [ann] = [a for a in data["annotations"] if a["image_id"] == hopper["id"]]
    assert ann["bbox"] == [0, 0, 64, 64]  # the fake's box is the top-left quarter, as x, y, width, height
    assert hopper["caption"].startswith("a ")


def test_ocr_regions_export_as_polygons(indexed: tuple[Database, list[Path]]) -> None:
    db, _ = indexed
    with db.transaction() as s:
        data = to_coco(s, "<OCR_WITH_REGION>")
    validate_coco(data)
    assert all(a["segmentation"] == [[0, 0, 5, 0, 5, 5, 0, 5]] for a in data["annotations"])
    assert all(c["name"].startswith("text") for c in data["categories"])


def test_jsonl_export_one_line_per_file(indexed: tuple[Database, list[Path]], tmp_path: Path) -> None:
    db, files = indexed
    out = tmp_path / "out.jsonl"
    with db.transaction() as s:
        assert export(s, "jsonl", out, "<OD>", folder=str(tmp_path / "inbox")) == 3
        assert export(s, "jsonl", tmp_path / "none.jsonl", "<OD>", folder=str(tmp_path / "in")) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["path"] for line in lines] == sorted(map(str, files))
    for line in lines:
        assert {"path", "sha256", "width", "height", "caption", "description", "ocr", "task", "regions"} == set(line)
        assert line["regions"] and all(len(r["bbox"]) == 4 and r["label"] for r in line["regions"])


def test_only_region_tasks_export() -> None:
    check_task(task_named("objects"))
    with pytest.raises(FlorenceWatchError, match="<CAPTION> is not a task the daemon runs with regions"):
        check_task(task_named("caption"))
