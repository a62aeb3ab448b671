"""Every Florence-2 task through the tiny model; inputs, regions, drawing, and the ask/find commands."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from daemon.config import ModelConfig, database_url, load_config
from daemon.draw import Shape, colour, draw, shapes
from daemon.errors import FlorenceWatchError, ImageError
from daemon.imaging import decode
from daemon.index.db import Database, File
from daemon.index.records import results_for
from daemon.model.analyze import FlorenceAnalyzer
from daemon.model.ask import ask, prompt_for, region_tokens
from daemon.service.find import any_word_query, find
from daemon.service.pipeline import Pipeline
from daemon.tasks import TASKS, parse_box, task_named
from daemon.testing.helpers import CORPUS, copy_corpus, make_config, write_config
from daemon.web.serve import make_server, serve_in_thread, url_of
from tests.cli.test_cli import run_cli
from tests.index.test_export import validate_coco

# What each kind of task's parsed result looks like.
SHAPES = {
    "<CAPTION>": str,
    "<DETAILED_CAPTION>": str,
    "<MORE_DETAILED_CAPTION>": str,
    "<OCR>": str,
    "<REGION_TO_CATEGORY>": str,
    "<REGION_TO_DESCRIPTION>": str,
    "<REGION_TO_OCR>": str,
    "<OD>": {"bboxes", "labels"},
    "<DENSE_REGION_CAPTION>": {"bboxes", "labels"},
    "<REGION_PROPOSAL>": {"bboxes", "labels"},
    "<CAPTION_TO_PHRASE_GROUNDING>": {"bboxes", "labels"},
    "<REFERRING_EXPRESSION_SEGMENTATION>": {"polygons", "labels"},
    "<REGION_TO_SEGMENTATION>": {"polygons", "labels"},
    "<OPEN_VOCABULARY_DETECTION>": {"bboxes", "bboxes_labels", "polygons", "polygons_labels"},
    "<OCR_WITH_REGION>": {"quad_boxes", "labels"},
}


@pytest.fixture(scope="module")
def analyzer(tiny_model: Path) -> FlorenceAnalyzer:
    return FlorenceAnalyzer(ModelConfig(name=str(tiny_model), num_beams=1, max_new_tokens=24))


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    return Image.open(CORPUS / "pillow/hopper.jpg").convert("RGB")


def test_the_catalogue_covers_every_task_the_processor_knows(analyzer: FlorenceAnalyzer) -> None:
    known = set(analyzer.processor.tasks_answer_post_processing_type)
    assert {t.token for t in TASKS} == known == set(SHAPES)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.aliases[0])
def test_every_task_runs_on_the_tiny_model(analyzer: FlorenceAnalyzer, hopper: Image.Image, task) -> None:
    text = "a man in a hat" if task.takes == "text" else None
    box = (10.0, 20.0, 90.0, 100.0) if task.takes == "region" else None
    result = ask(analyzer, hopper, task, text, box)
    expected = SHAPES[task.token]
    if expected is str:
        assert isinstance(result, str)
        assert "<loc_" not in result and "</s>" not in result
    else:
        assert isinstance(result, dict) and set(result) == expected
        for shape in shapes(result, task.token):  # whatever the random weights found lies on the image
            assert all(-1 <= v <= 129 for v in shape.points), shape


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("objects", "<OD>"),
        ("<OD>", "<OD>"),
        ("od", "<OD>"),
        ("OD", "<OD>"),
        ("caption", "<CAPTION>"),
        ("ocr", "<OCR>"),
        ("ground", "<CAPTION_TO_PHRASE_GROUNDING>"),
        ("segment", "<REFERRING_EXPRESSION_SEGMENTATION>"),
        ("segment-region", "<REGION_TO_SEGMENTATION>"),
        ("describe-region", "<REGION_TO_DESCRIPTION>"),
        ("  Dense  ", "<DENSE_REGION_CAPTION>"),
    ],
)
def test_aliases_and_raw_tokens(name: str, token: str) -> None:
    assert task_named(name).token == token


def test_an_unknown_task_lists_the_tasks() -> None:
    with pytest.raises(FlorenceWatchError, match=r"unknown task 'colour'; the tasks are: caption \(<CAPTION>\), "):
        task_named("colour")


def test_region_becomes_florence_location_bins(analyzer: FlorenceAnalyzer) -> None:
    proc = analyzer.processor
    assert region_tokens((0, 0, 100, 50), (100, 50), proc) == "<loc_0><loc_0><loc_999><loc_999>"
    assert region_tokens((10, 5, 50.05, 25), (100, 50), proc) == "<loc_100><loc_100><loc_500><loc_500>"
    image = Image.new("RGB", (100, 50))
    prompt = prompt_for(task_named("region-category"), image, proc, box=(10, 5, 50, 25))
    assert prompt == "<REGION_TO_CATEGORY><loc_100><loc_100><loc_500><loc_500>"
    # The processor turns it into Florence's own question, region tokens intact.
    assert proc._construct_prompts([prompt]) == ["What is the region <loc_100><loc_100><loc_500><loc_500>?"]
    ids = proc.tokenizer.convert_tokens_to_ids(["<loc_100>", "<loc_500>"])
    assert proc.tokenizer.unk_token_id not in ids


@pytest.mark.parametrize(
    ("task", "text", "box", "message"),
    [
        ("ground", None, None, "<CAPTION_TO_PHRASE_GROUNDING> needs TEXT"),
        ("ground", "  ", None, "<CAPTION_TO_PHRASE_GROUNDING> needs TEXT"),
        ("region-category", None, None, "<REGION_TO_CATEGORY> needs a region: --box x1,y1,x2,y2"),
        ("caption", "a dog", None, "<CAPTION> takes no TEXT (got 'a dog')"),
        ("ground", "a dog", (0, 0, 5, 5), "<CAPTION_TO_PHRASE_GROUNDING> takes no --box"),
        ("objects", None, (0, 0, 5, 5), "<OD> takes no --box"),
        ("region-ocr", None, (0, 0, 200, 5), "--box 0,0,200,5 is not a region of this 128x128 image"),
        ("region-ocr", None, (50, 0, 10, 5), "--box 50,0,10,5 is not a region of this 128x128 image"),
    ],
)
def test_wrong_inputs_are_clear_errors(
    analyzer: FlorenceAnalyzer, hopper: Image.Image, task: str, text: str | None, box: tuple | None, message: str
) -> None:
    with pytest.raises(FlorenceWatchError) as err:
        prompt_for(task_named(task), hopper, analyzer.processor, text, box)
    assert str(err.value).startswith(message)


def test_box_argument() -> None:
    assert parse_box("1,2, 3,4.5") == (1.0, 2.0, 3.0, 4.5)
    for bad in ("1,2,3", "a,b,c,d", ""):
        with pytest.raises(FlorenceWatchError, match="expected four pixel coordinates"):
            parse_box(bad)


def test_shapes_of_every_result_kind() -> None:
    assert shapes("a caption") == []
    assert shapes({"bboxes": [[1, 2, 3, 4]], "labels": ["dog"]}) == [Shape("box", (1, 2, 3, 4), "dog")]
    assert shapes({"quad_boxes": [[0, 0, 4, 0, 4, 2, 0, 2]], "labels": ["STOP"]})[0].polygon() == [
        (0, 0),
        (4, 0),
        (4, 2),
        (0, 2),
    ]
    two_parts = {"polygons": [[[0, 0, 5, 0, 5, 5], [6, 6, 8, 6, 8, 8]]], "labels": ["cat"]}
    assert [s.label for s in shapes(two_parts)] == ["cat", "cat"]
    ovd = {"bboxes": [[1, 1, 2, 2]], "bboxes_labels": ["car"], "polygons": [], "polygons_labels": []}
    assert shapes(ovd) == [Shape("box", (1, 1, 2, 2), "car")]
    assert shapes({"bboxes": [[1, 1, 2, 2]], "labels": []})[0].label == ""  # region proposals


def test_drawing_marks_a_copy_and_leaves_the_image_alone(hopper: Image.Image) -> None:
    before = hashlib.sha256(hopper.tobytes()).hexdigest()
    out = draw(hopper, [Shape("box", (10, 40, 100, 120), "hat"), Shape("polygon", (5, 5, 60, 5, 30, 30), "")])
    assert hashlib.sha256(hopper.tobytes()).hexdigest() == before
    assert out.size == hopper.size and out is not hopper
    expected = tuple(int(colour("hat")[i : i + 2], 16) for i in (1, 3, 5))
    assert out.getpixel((55, 120)) == expected  # on the box's bottom edge
    assert out.getpixel((55, 80)) == hopper.getpixel((55, 80))  # inside: untouched


def test_ask_command_json_and_drawing(tmp_path: Path, tiny_model: Path) -> None:
    cfg = write_config(tmp_path, tiny_model)
    [image] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    out = tmp_path / "drawn" / "found.png"
    proc = run_cli("--config", str(cfg), "ask", str(image), "ground", "a man in a hat", "--json", "--draw", str(out))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["task"] == "<CAPTION_TO_PHRASE_GROUNDING>" and got["text"] == "a man in a hat"
    assert set(got["result"]) == {"bboxes", "labels"} and got["image"] == str(image)
    assert Image.open(out).size == (128, 128)
    assert f"region(s) on {out}" in proc.stderr

    region = run_cli("--config", str(cfg), "ask", str(image), "region-category", "--box", "10,10,60,60")
    assert region.returncode == 0, region.stderr
    assert region.stdout.strip() and "<loc_" not in region.stdout


def test_ask_command_refuses_bad_input_before_loading_the_model(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tmp_path / "no-model")  # would fail to load: the check comes first
    [image] = copy_corpus(["pillow/hopper.jpg"], tmp_path)
    proc = run_cli("--config", str(cfg), "ask", str(image), "segment-region")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: <REGION_TO_SEGMENTATION> needs a region: --box x1,y1,x2,y2 (pixels)"
    proc = run_cli("--config", str(cfg), "ask", str(tmp_path / "missing.jpg"), "caption")
    assert proc.returncode == 1 and "missing.jpg" in proc.stderr and "Traceback" not in proc.stderr


def _indexed_twice(tmp_path: Path, open_test_pipeline: Callable[..., Pipeline]) -> tuple[Pipeline, list[Path]]:
    """Two copies of one image indexed by the fake model (whose captions all say "picture")."""
    files = [
        *copy_corpus(["pillow/hopper.jpg"], tmp_path / "inbox" / "a"),
        *copy_corpus(["pillow/hopper.jpg"], tmp_path / "inbox" / "b"),
    ]
    pipeline = open_test_pipeline(make_config(tmp_path, metadata={"write": False}))
    pipeline.offer(files)
    pipeline.drain()
    return pipeline, files


def test_find_loads_the_model_only_when_a_match_decodes(
    tmp_path: Path, open_test_pipeline: Callable[..., Pipeline], analyzer: FlorenceAnalyzer
) -> None:
    pipeline, files = _indexed_twice(tmp_path, open_test_pipeline)

    def no_model() -> FlorenceAnalyzer:
        raise AssertionError("the model was loaded without a match to ground")

    assert list(find(pipeline.db, "zebra crossing", no_model)) == []
    assert list(find(pipeline.db, "picture", no_model, folder=str(tmp_path / "elsewhere"))) == []
    with pytest.raises(FlorenceWatchError, match="find needs a phrase with words in it"):
        find(pipeline.db, "-picture", no_model)  # raised at the call, before any search

    files[0].unlink()  # moved since it was indexed
    loads: list[int] = []
    found = list(find(pipeline.db, "a picture", lambda: loads.append(1) or analyzer))
    assert loads == [1] and sorted(f.rank for f in found) == [1, 2]
    gone, there = sorted(found, key=lambda f: f.path)
    with pytest.raises(ImageError) as why:
        decode(files[0])
    assert gone.path == str(files[0]) and gone.skipped == why.value.reason  # the reason, without the path
    assert gone.image is None and gone.boxes == ()
    assert there.path == str(files[1]) and there.skipped is None and there.image is not None
    assert set(there.result) == {"bboxes", "labels"} and there.task.token == "<CAPTION_TO_PHRASE_GROUNDING>"
    assert [b.box for b in there.boxes] == [tuple(b) for b in there.result["bboxes"]]


def test_find_asks_for_any_of_the_words() -> None:
    query = any_word_query('a -dog caption:"red car"', folder="/pics")
    assert query.positive == '"a" OR {caption} : "red car"' and not query.negative and query.folder


def test_find_grounds_the_phrase_in_the_best_matches(tmp_path: Path, tiny_model: Path) -> None:
    cfg = write_config(tmp_path, tiny_model)
    files = copy_corpus(["pillow/hopper.jpg"], tmp_path / "inbox" / "a") + copy_corpus(
        ["pillow/hopper.jpg"], tmp_path / "inbox" / "b"
    )
    assert run_cli("--config", str(cfg), "scan", str(tmp_path / "inbox")).returncode == 0
    show = json.loads(run_cli("--config", str(cfg), "show", str(files[0]), "--json").stdout)
    phrase = " ".join(show["caption"].split()[:2])  # words the index holds for this image
    drawn = tmp_path / "found"
    proc = run_cli("--config", str(cfg), "find", phrase, "--json", "--draw-dir", str(drawn))
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert str(files[0]) in [f["path"] for f in found]
    assert sorted(f["path"] for f in found) == sorted(map(str, files))  # a copy has the same caption
    for f in found:
        assert all(len(b["box"]) == 4 for b in f["boxes"])
    assert sorted(p.name for p in drawn.iterdir()) == [
        f"{i:02d}-{Path(f['path']).name}.png" for i, f in enumerate(found, 1)
    ]
    none = run_cli("--config", str(cfg), "find", "zebra crossing", "--folder", str(tmp_path / "inbox"))
    assert none.returncode == 0 and "no indexed image mentions 'zebra crossing'" in none.stderr

    # The same index, exported: the tiny model's real result shapes become a valid COCO file.
    proc = run_cli("--config", str(cfg), "export", "--format", "coco", "--task", "objects", str(tmp_path / "c.json"))
    assert proc.returncode == 0 and proc.stderr.strip() == f"wrote 2 image(s) to {tmp_path / 'c.json'}"
    validate_coco(json.loads((tmp_path / "c.json").read_text(encoding="utf-8")))

    # And served: the web page draws the tiny model's own regions.
    config = load_config(cfg)
    db = Database(database_url(config.index.database))
    server = make_server(replace(config, serve=replace(config.serve, thumbnails=str(tmp_path / "thumbs"))), db, port=0)
    thread = serve_in_thread(server)
    try:
        with db.transaction() as s:
            f = s.query(File).filter(File.path == str(files[0])).one()
            _model, results = results_for(s, f.image_id)
        drawn_regions = sum(len(shapes(results.get(t), t)) for t in ("<OD>", "<OCR_WITH_REGION>"))
        with urllib.request.urlopen(url_of(server) + f"image/{f.id}", timeout=30) as r:
            page = r.read().decode()
        assert page.count("<polygon") == drawn_regions
        assert drawn_regions >= 1  # the tiny model (fixed seed) finds one region here
        with urllib.request.urlopen(url_of(server) + f"thumb/{f.id}", timeout=30) as r:
            assert r.headers["Content-Type"] == "image/jpeg"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        db.close()
