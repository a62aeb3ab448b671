"""The Florence-2 task catalogue, and every task on demand.

``TASKS`` is the one list of tasks: what each takes, its aliases, how many
tokens it needs by default, and which layer of the web page draws its
regions. Config validation, export and the page derive their lists from it
(the functions below read it each time, so a task added here is known
everywhere). The daemon runs a fixed set of input-less tasks on every
image; ``ask`` and ``find`` run any task once, with the text or region it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.errors import FlorenceWatchError

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Task:
    token: str
    takes: str  # "" (nothing: the daemon can run it on every image), "text" or "region"
    aliases: tuple[str, ...]
    about: str
    max_new_tokens: int = 256  # the default limit; captions need few, regions many (4 tokens a box)
    layer: str = ""  # the web page layer its regions are drawn in; "" if it gives no regions


TASKS = [
    Task("<CAPTION>", "", ("caption",), "a one-line caption", 64),
    Task("<DETAILED_CAPTION>", "", ("detailed-caption", "detailed"), "a longer caption"),
    Task("<MORE_DETAILED_CAPTION>", "", ("more-detailed-caption", "description", "describe"), "a paragraph"),
    Task("<OD>", "", ("objects", "od", "detect"), "objects with boxes", 512, "objects"),
    Task("<DENSE_REGION_CAPTION>", "", ("dense-regions", "dense"), "regions with a caption each", 512, "objects"),
    Task(
        "<REGION_PROPOSAL>", "", ("proposals", "region-proposal"), "boxes around anything object-like", 512, "proposals"
    ),
    Task("<CAPTION_TO_PHRASE_GROUNDING>", "text", ("ground", "grounding"), "where each phrase of TEXT is"),
    Task(
        "<REFERRING_EXPRESSION_SEGMENTATION>",
        "text",
        ("segment", "referring-segmentation"),
        "a mask (polygon) of what TEXT refers to",
    ),
    Task(
        "<REGION_TO_SEGMENTATION>",
        "region",
        ("segment-region", "region-segmentation"),
        "a mask (polygon) of the object in --box",
    ),
    Task(
        "<OPEN_VOCABULARY_DETECTION>",
        "text",
        ("detect-text", "open-vocabulary", "ovd"),
        "boxes or polygons of things named by TEXT",
    ),
    Task("<REGION_TO_CATEGORY>", "region", ("region-category", "classify-region"), "what the object in --box is"),
    Task(
        "<REGION_TO_DESCRIPTION>",
        "region",
        ("region-description", "describe-region"),
        "a description of the region in --box",
    ),
    Task("<REGION_TO_OCR>", "region", ("region-ocr", "read-region"), "the text in --box"),
    Task("<OCR>", "", ("ocr", "text"), "the text in the image", 512),
    Task(
        "<OCR_WITH_REGION>",
        "",
        ("ocr-regions", "text-regions"),
        "each line of text with its quadrilateral",
        1024,
        "text",
    ),
]
DEFAULT_TASKS = ("<CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>", "<OCR_WITH_REGION>")


def inputless() -> tuple[str, ...]:
    """Tasks that take no input: the ones the daemon may run on every image unattended."""
    return tuple(t.token for t in TASKS if not t.takes)


def default_max_new_tokens() -> dict[str, int]:
    return {t.token: t.max_new_tokens for t in TASKS if not t.takes}


def region_tasks() -> tuple[str, ...]:
    """Input-less tasks that give regions: what export writes as annotations."""
    return tuple(t.token for t in TASKS if t.layer and not t.takes)


def layers() -> dict[str, str]:
    """Task token -> the web page layer that draws its regions."""
    return {t.token: t.layer for t in TASKS if t.layer}


def task_named(name: str) -> Task:
    """The task for a raw token (``<OD>``), its bare name (``OD``) or an alias (``objects``)."""
    wanted = name.strip().lower()
    task = next((t for t in TASKS if wanted in {n.lower() for n in (t.token, t.token.strip("<>"), *t.aliases)}), None)
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


def check_input(
    task: Task, size: tuple[int, int], text: str | None = None, box: tuple[float, float, float, float] | None = None
) -> None:
    """A missing, unexpected or out-of-image input is a clear error (before any model is loaded)."""
    if task.takes == "text" and not (text or "").strip():
        raise FlorenceWatchError(f'{task.token} needs TEXT: florence-watch ask IMAGE {task.aliases[0]} "a red car"')
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
