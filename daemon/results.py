"""What the model's answers mean: clean text, and the fields we index and write.

Kept apart from ``analyze`` (the model itself) so that the index, the web
page and the export read results without importing torch or transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# task -> parsed result, as Florence2Processor.post_process_generation gives it
TaskResults = dict[str, Any]

_SPECIAL = re.compile(r"</?[a-z_]+(?:_\d+)?>|<?loc_\d+>")  # the parser can leave "loc_N>" halves
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufffd]")
_SPACES = re.compile(r"\s+")
# Where a search snippet's match starts and ends (control characters no caption contains: clean_text removes them).
MARK_START, MARK_END = "\x02", "\x03"


def clean_text(text: str) -> str:
    """Plain text from model output: no <loc_N>/<s> tokens, no control characters."""
    text = _SPECIAL.sub(" ", text)
    text = _CONTROL.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def clean_result(result: Any) -> Any:
    """Strip special tokens from every label and text in a parsed result."""
    if isinstance(result, str):
        return clean_text(result)
    if isinstance(result, dict):
        return {k: ([clean_text(v) for v in vals] if k.endswith("labels") else vals) for k, vals in result.items()}
    return result


@dataclass
class Summary:
    """What one image's results mean for people: the fields we index and write."""

    caption: str = ""
    description: str = ""
    ocr: str = ""
    labels: list[str] | None = None
    objects: list[dict[str, Any]] | None = None


def summarize(results: TaskResults) -> Summary:
    """Map task results to caption, description, OCR text and object labels."""
    caption = _first_text(results, ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"))
    description = _first_text(results, ("<MORE_DETAILED_CAPTION>", "<DETAILED_CAPTION>", "<CAPTION>"))
    ocr = _first_text(results, ("<OCR>",))
    if not ocr and isinstance(results.get("<OCR_WITH_REGION>"), dict):
        ocr = " ".join(t for t in results["<OCR_WITH_REGION>"].get("labels", []) if t)
    objects: list[dict[str, Any]] = []
    for task in ("<OD>", "<DENSE_REGION_CAPTION>"):
        r = results.get(task)
        if isinstance(r, dict):
            objects += [
                {"label": lbl, "box": box}
                for lbl, box in zip(r.get("labels", []), r.get("bboxes", []), strict=False)
                if lbl
            ]
    labels = list(dict.fromkeys(o["label"] for o in objects))  # deduplicated, first-seen order
    return Summary(caption=caption, description=description, ocr=ocr, labels=labels, objects=objects)


def _first_text(results: TaskResults, tasks: tuple[str, ...]) -> str:
    for task in tasks:
        value = results.get(task)
        if isinstance(value, str) and value:
            return value
    return ""


def marked(snippet: str, start: str = "[", end: str = "]") -> str:
    """A search snippet with its matches between *start* and *end* (bold on a terminal, brackets elsewhere)."""
    return snippet.replace(MARK_START, start).replace(MARK_END, end)


def combine_pages(pages: list[TaskResults]) -> TaskResults:
    """A document's results from its pages': the first page's, with every page's text as ``<OCR>``.

    The caption and objects of a scanned letter are its first page's; its
    text is all of it, pages apart by a blank line, so that search finds the
    document by any page (``daemon.index.pages`` tells which).
    """
    if not pages:
        return {}
    return {**pages[0], "<OCR>": "\n\n".join(t for t in (summarize(p).ocr for p in pages) if t)}
