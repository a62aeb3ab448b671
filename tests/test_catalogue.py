"""The task catalogue is the one place a task is added: config, export and the web page all follow it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from daemon import tasks
from daemon.config import parse_config
from daemon.errors import ConfigError, FlorenceWatchError
from daemon.index.db import File
from daemon.index.export import check_task
from daemon.results import TaskResults
from daemon.tasks import Task, task_named
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config
from daemon.web.serve import WebApp

NEW = Task("<NEW_TASK>", "", ("new-task",), "regions of a task added in one place", 128, "newlayer")
SVG = "{http://www.w3.org/2000/svg}"


class NewTaskAnalyzer(FakeAnalyzer):
    """The fake model, also answering the new task with one labelled box."""

    tasks = (*FakeAnalyzer.tasks, NEW.token)

    def describe(self, im: Image.Image) -> TaskResults:
        return {**super().describe(im), NEW.token: {"bboxes": [[2, 3, 20, 30]], "labels": ["a new thing"]}}


def test_config_and_export_accept_a_task_once_the_catalogue_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: an unknown task, refused everywhere (so what follows is the catalogue's doing).
    with pytest.raises(ConfigError, match=r"model\.tasks"):
        parse_config({"model": {"tasks": [NEW.token]}})
    with pytest.raises(FlorenceWatchError, match="unknown task"):
        task_named("new-task")

    monkeypatch.setattr(tasks, "TASKS", [*tasks.TASKS, NEW])
    model = parse_config({"model": {"tasks": [NEW.token]}}).model
    assert model.tasks == (NEW.token,) and model.max_new_tokens[NEW.token] == 128
    with pytest.raises(ConfigError, match=r"model\.tasks"):  # still checked, not anything goes
        parse_config({"model": {"tasks": ["<NOT_A_TASK>"]}})
    check_task(task_named("new-task"))  # export takes it: it is input-less and has a layer
    with pytest.raises(FlorenceWatchError, match="export one of"):
        check_task(task_named("caption"))


def test_the_image_page_draws_a_new_tasks_layer(
    tmp_path: Path, open_test_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "TASKS", [*tasks.TASKS, NEW])
    config = make_config(tmp_path, metadata={"write": False}, serve={"thumbnails": str(tmp_path / "thumbs")})
    picture = tmp_path / "inbox" / "new.png"
    picture.parent.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(picture)
    pipeline = open_test_pipeline(config, NewTaskAnalyzer())
    pipeline.offer([picture])
    pipeline.drain()
    with pipeline.db.transaction() as s:
        file_id = s.query(File).filter(File.path == str(picture), File.state == "indexed").one().id
    page = WebApp(config, pipeline.db).respond(f"/image/{file_id}")
    assert page.status == 200
    overlay = re.search(r'<svg id="overlay".*?</svg>', page.body.decode(), re.S)
    assert overlay, page.body
    [layer] = ET.fromstring(overlay.group()).findall(f"{SVG}g[@data-layer='newlayer']")
    assert [t.text for t in layer.iter(f"{SVG}text")] == ["a new thing"]
    assert [p.get("points") for p in layer.iter(f"{SVG}polygon")] == ["2.0,3.0 20.0,3.0 20.0,30.0 2.0,30.0"]
    assert b'class="toggle" data-layer="newlayer"' in page.body
