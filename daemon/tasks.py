"""Every Florence-2 task on demand: names, inputs, regions, and one call.

The daemon runs a fixed set of tasks on every image; ``ask`` and ``find``
run any task once, on one image, with the text or region it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from .errors import FlorenceWatchError


@dataclass(frozen=True)
class Task:
    token: str
    takes: str  # "" (nothing), "text" or "region"
    aliases: tuple[str, ...]
    about: str


TASKS = [
    Task("<CAPTION>", "", ("caption",), "a one-line caption"),
    Task("<DETAILED_CAPTION>", "", ("detailed-caption", "detailed"), "a longer caption"),
    Task("<MORE_DETAILED_CAPTION>", "", ("more-detailed-caption", "description", "describe"), "a paragraph"),
    Task("<OD>", "", ("objects", "od", "detect"), "objects with boxes"),
    Task("<DENSE_REGION_CAPTION>", "", ("dense-regions", "dense"), "regions with a caption each"),
    Task("<REGION_PROPOSAL>", "", ("proposals", "region-proposal"), "boxes around anything object-like"),
    Task("<CAPTION_TO_PHRASE_GROUNDING>", "text", ("ground", "grounding"), "where each phrase of TEXT is"),
    Task("<REFERRING_EXPRESSION_SEGMENTATION>", "text", ("segment", "referring-segmentation"),
         "a mask (polygon) of what TEXT refers to"),
    Task("<REGION_TO_SEGMENTATION>", "region", ("segment-region", "region-segmentation"),
         "a mask (polygon) of the object in --box"),
    Task("<OPEN_VOCABULARY_DETECTION>", "text", ("detect-text", "open-vocabulary", "ovd"),
         "boxes or polygons of things named by TEXT"),
    Task("<REGION_TO_CATEGORY>", "region", ("region-category", "classify-region"), "what the object in --box is"),
    Task("<REGION_TO_DESCRIPTION>", "region", ("region-description", "describe-region"),
         "a description of the region in --box"),
    Task("<REGION_TO_OCR>", "region", ("region-ocr", "read-region"), "the text in --box"),
    Task("<OCR>", "", ("ocr", "text"), "the text in the image"),
    Task("<OCR_WITH_REGION>", "", ("ocr-regions", "text-regions"), "each line of text with its quadrilateral"),
]
_BY_NAME = {name.lower(): t for t in TASKS for name in (t.token, t.token.strip("<>"), *t.aliases)}


def task_named(name: str) -> Task:
    """The task for a raw token (``<OD>``), its bare name (``OD``) or an alias (``objects``)."""
    task = _BY_NAME.get(name.strip().lower())
    if task is None:
        names = ", ".join(f"{t.aliases[0]} ({t.token})" for t in TASKS)
        raise FlorenceWatchError(f"unknown task {name!r}; the tasks are: {names}")
    return task


def parse_box(value: str) -> tuple[float, float, float, float]:
    """``x1,y1,x2,y2`` in pixels."""
    try:
        x1, y1, x2, y2 = (float(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise FlorenceWatchError(f"--box {value!r}: expected four pixel coordinates x1,y1,x2,y2") from None
    return x1, y1, x2, y2


def check_input(task: Task, size: tuple[int, int], text: str | None = None,
                box: tuple[float, float, float, float] | None = None) -> None:
    """A missing, unexpected or out-of-image input is a clear error (before any model is loaded)."""
    if task.takes == "text" and not (text or "").strip():
        raise FlorenceWatchError(f"{task.token} needs TEXT: florence-watch ask IMAGE {task.aliases[0]} \"a red car\"")
    if task.takes == "region" and box is None:
        raise FlorenceWatchError(f"{task.token} needs a region: --box x1,y1,x2,y2 (pixels)")
    if (text or "").strip() and task.takes != "text":
        raise FlorenceWatchError(f"{task.token} takes no TEXT (got {text!r})")
    if box is not None and task.takes != "region":
        raise FlorenceWatchError(f"{task.token} takes no --box")
    if box is not None:
        w, h = size
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise FlorenceWatchError(
                f"--box {x1:g},{y1:g},{x2:g},{y2:g} is not a region of this {w}x{h} image "
                "(need 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height)"
            )


def region_tokens(box: tuple[float, float, float, float], size: tuple[int, int], processor: Any) -> str:
    """The box as Florence's ``<loc_N>`` bins, quantised exactly as its processor does."""
    import torch

    bins = processor.post_processor.quantize(torch.tensor([box], dtype=torch.float32), size)
    return "".join(f"<loc_{int(v)}>" for v in bins[0].tolist())


def prompt_for(task: Task, image: Image.Image, processor: Any, text: str | None = None,
               box: tuple[float, float, float, float] | None = None) -> str:
    """The task token followed by its input, as Florence2Processor expects it."""
    check_input(task, image.size, text, box)
    if task.takes == "text":
        return task.token + (text or "").strip()
    if task.takes == "region":
        assert box is not None
        return task.token + region_tokens(box, image.size, processor)
    return task.token


def ask(analyzer: Any, image: Image.Image, task: Task, text: str | None = None,
        box: tuple[float, float, float, float] | None = None) -> Any:
    """Run one task on one image with the analyzer's model; the parsed result."""
    from .analyze import naive_generate

    prompt = prompt_for(task, image, analyzer.processor, text, box)
    return naive_generate(analyzer, image, task.token, prompt=prompt)
