"""Big pages read in tiles, through the model and the pipeline.

The tiny Florence-2 from disk shows that a task run alone on tiles
(``run_task``) gives exactly what the whole batch gives for that task; a
fake model that reads only what is wholly inside the image it is given
shows the pipeline putting a 300-dpi page's words back together, each
once, in page coordinates and reading order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from daemon.config import ModelConfig
from daemon.index import records
from daemon.model.analyze import FlorenceAnalyzer, Interrupted
from daemon.results import TaskResults
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config
from daemon.tiling import grid

OCR = "<OCR_WITH_REGION>"


@pytest.fixture(scope="module")
def analyzer(tiny_model: Path) -> FlorenceAnalyzer:
    return FlorenceAnalyzer(ModelConfig(name=str(tiny_model), num_beams=1, max_new_tokens=20))


def _page(size: tuple[int, int] = (1600, 1000)) -> Image.Image:
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    for i in range(size[1] // 40):
        draw.text((40 + 7 * i, 20 + 40 * i), f"line {i} of a scanned letter, small print", fill="black")
    return page


def test_a_task_alone_on_tiles_gives_what_the_batch_gives_for_it(analyzer: FlorenceAnalyzer) -> None:
    page = _page()
    crops = [page.crop(t) for t in grid(page.size)]
    assert len(crops) == 6
    alone = analyzer.run_task(crops[:3], OCR)
    batch = analyzer.analyze(crops[:3])
    assert alone == [r[OCR] for r in batch]  # token for token: the same vision features, the same task
    assert all(set(r) == {"quad_boxes", "labels"} for r in alone)


def test_a_shutdown_stops_the_tiles(analyzer: FlorenceAnalyzer) -> None:
    analyzer.should_stop = lambda: True
    try:
        with pytest.raises(Interrupted):
            analyzer.run_task([_page().crop((0, 0, 768, 768))], OCR)
    finally:
        analyzer.should_stop = None


class PageReader(FakeAnalyzer):
    """Reads 'words': each a block of one grey level (its label), seen only when wholly inside the image.

    The first pass over a whole page finds just its title, as Florence-2 does with
    body text shrunk to a few pixels per letter.
    """

    def describe(self, im: Image.Image) -> TaskResults:
        results = super().describe(im)
        if im.width >= 1536:  # a whole page: its title if anything is printed on it
            printed = len(np.unique(np.asarray(im.convert("L")))) > 1
            boxes, labels = ([[0, 0, 90, 0, 90, 30, 0, 30]], ["TITLE"]) if printed else ([], [])
            return {**results, OCR: {"quad_boxes": boxes, "labels": labels}}
        return {**results, OCR: self.read(im)}

    @staticmethod
    def read(im: Image.Image) -> dict[str, list[Any]]:
        a = np.asarray(im.convert("L"))
        boxes, labels = [], []
        for level in sorted(set(np.unique(a).tolist()) - {255}):
            ys, xs = np.nonzero(a == level)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            cut = x0 == 0 or y0 == 0 or x1 == im.width or y1 == im.height
            if not cut:
                boxes.append([float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)])
                labels.append(f"w{level}")
        return {"quad_boxes": boxes, "labels": labels}

    def run_task(self, images: Sequence[Image.Image], task: str) -> list[Any]:
        self.tile_calls.append(len(images))
        return [self.read(im) for im in images]


def _scan(path: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """A 300-dpi A4 'scan': 200 words (grey blocks) on lines 60 px apart; their labels and boxes."""
    page = Image.new("L", (2480, 3508), 255)
    draw = ImageDraw.Draw(page)
    words = []
    for i in range(200):
        line, col = divmod(i, 4)
        box = (
            100 + col * 560 + (line % 3) * 40,
            200 + line * 60,
            100 + col * 560 + (line % 3) * 40 + 110,
            230 + line * 60,
        )
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=i)
        words.append((f"w{i}", box))
    page.convert("RGB").save(path, "PNG")  # lossless: the grey levels are the words' names
    return words


@pytest.mark.parametrize("rule", ["auto", "never"])
def test_a_scanned_page_is_read_in_tiles_and_put_back_together(
    tmp_path: Path, open_test_pipeline: PipelineFactory, rule: str
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    words = _scan(inbox / "letter.png")
    Image.new("RGB", (2480, 3508), (30, 90, 160)).save(inbox / "sky.png")  # big, and no text at all
    _page((1200, 900)).save(inbox / "small.png")  # shrunk less than twice: one pass is enough
    model = PageReader()
    pipeline = open_test_pipeline(make_config(tmp_path, metadata={"write": False}, ocr={"tiles": rule}), model)
    pipeline.offer(sorted(inbox.iterdir()))
    pipeline.drain()
    with pipeline.db.transaction() as s:
        letter = records.file_info(s, str(inbox / "letter.png"))
        sky = records.file_info(s, str(inbox / "sky.png"))
    assert letter is not None and sky is not None
    if rule == "never":
        assert model.tile_calls == [] and letter["ocr"] == "TITLE"
        return
    assert model.tile_calls == [4] * 6  # the page's 24 tiles, in the model's batches; none for the others
    result = letter["results"][OCR]
    assert result["labels"] == [w for w, _ in words]  # every word once, in reading order
    for quad, (_, (x0, y0, x1, y1)) in zip(result["quad_boxes"], words, strict=True):
        assert quad == [x0, y0, x1, y0, x1, y1, x0, y1]  # in the page's coordinates
    assert letter["ocr"].startswith("w0 w1 w2 w3 w4")
    assert sky["results"][OCR]["labels"] == [] and sky["ocr"] == ""
