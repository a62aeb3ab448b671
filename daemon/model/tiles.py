"""A big image's OCR read again in tiles (``daemon.tiling``), with the model at hand."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from daemon.results import TaskResults
from daemon.tiling import grid, merge, wants_tiles

if TYPE_CHECKING:
    from PIL import Image

    from daemon.model.analyze import Analyzer

log = logging.getLogger(__name__)

OCR_TASK = "<OCR_WITH_REGION>"


def read_batch_in_tiles(
    analyzer: Analyzer, images: Sequence[Image.Image], results: list[TaskResults], rule: str
) -> list[TaskResults]:
    """``read_in_tiles`` for each image of a batch and its results."""
    return [read_in_tiles(analyzer, im, r, rule) for im, r in zip(images, results, strict=True)]


def read_in_tiles(analyzer: Analyzer, image: Image.Image, results: TaskResults, rule: str) -> TaskResults:
    """*results* with their OCR replaced by the tiles' where ``wants_tiles`` says so; else as they are."""
    if OCR_TASK not in results or not wants_tiles(image.size, results[OCR_TASK], rule):
        return results
    tiles = grid(image.size)
    found = []
    for i in range(0, len(tiles), max(1, analyzer.batch_size)):  # the tiles are a batch like any other
        found += analyzer.run_task([image.crop(t) for t in tiles[i : i + analyzer.batch_size]], OCR_TASK)
    log.debug("read %dx%d in %d tiles", image.width, image.height, len(tiles))
    return {**results, OCR_TASK: merge(tiles, found, image.size)}
