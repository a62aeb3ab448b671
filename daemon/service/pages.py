"""A document's pages through the model: drawn a few at a time, each page described once.

The model thread draws the pages it needs as it goes (``pdf.pages``), a
batch at a time: a 50-page scan never sits in memory whole. A page whose
drawing the model has described before, in this PDF or any other, takes
its results from the index instead (a re-saved PDF with one page changed
runs the model on that page alone).
"""

from __future__ import annotations

import logging

from daemon import pdf
from daemon.config import Config
from daemon.index import pages
from daemon.index.db import Database
from daemon.index.pages import PageResult
from daemon.model.analyze import Analyzer
from daemon.model.tiles import read_batch_in_tiles
from daemon.results import TaskResults, combine_pages

log = logging.getLogger(__name__)


def describe(analyzer: Analyzer, db: Database, doc: pdf.Pages, config: Config) -> tuple[TaskResults, list[PageResult]]:
    """The document's results and its pages'; ImageError if a page cannot be drawn, Interrupted on a stop."""
    with db.transaction() as s:
        found = pages.known(s, list(doc.keys), analyzer.model_id, analyzer.tasks)
    # Each drawing once: a page the same as an earlier one (two blank pages) takes that one's results.
    todo = [n for n, key in enumerate(doc.keys, 1) if key not in found and key not in doc.keys[: n - 1]]
    step = max(1, analyzer.batch_size)
    for i in range(0, len(todo), step):
        numbers = todo[i : i + step]
        images = pdf.pages(doc.path, numbers, config.pdf.dpi)
        results = read_batch_in_tiles(analyzer, images, analyzer.analyze(images), config.ocr.tiles)
        for n, im, r in zip(numbers, images, results, strict=True):
            found[doc.keys[n - 1]] = PageResult(n, im.width, im.height, doc.keys[n - 1], r)
    if len(todo) < len(doc.keys):
        known = len(doc.keys) - len(todo)
        log.info("%s: %d of %d page(s) described before or repeated, not run again", doc.path, known, len(doc.keys))
    described = [found[key] for key in doc.keys]
    described = [PageResult(n, p.width, p.height, p.content_key, p.results) for n, p in enumerate(described, 1)]
    return combine_pages([p.results for p in described]), described
