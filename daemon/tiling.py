"""Small text on big images: OCR on overlapping tiles at the model's own input size.

Florence-2 sees every image at 768×768. A 300-dpi page (2480×3508) shrinks
4.6 times on its long side, and body text becomes a few pixels per letter.
Cut into tiles of 768×768 that overlap, each tile is read at full
resolution; here the tiles' regions are put back into the image's
coordinates, each counted once, and ordered as a person reads.

Counted once: every point of the image belongs to one tile's *core* (the
tile minus half of each overlap with a neighbour), and a region is kept from
the tile whose core holds its centre. A line of text longer than the
overlap that crosses a tile boundary comes out as two pieces, one per tile,
joined again by the reading order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

TILE_PX = 768  # the model's input size (preprocessor_config.json): a tile is never shrunk
OVERLAP_PX = 128  # a line of text up to this tall is whole in at least one tile
MIN_SHRINK = 2.0  # tiles only when the whole image is shrunk at least this much for the model
TILE_RULES = ("auto", "never")

Box = tuple[int, int, int, int]  # left, top, right, bottom


def wants_tiles(size: tuple[int, int], first_pass: Any, rule: str) -> bool:
    """Whether to read *size*'s image again in tiles: ``auto`` when the model shrank it at least
    MIN_SHRINK times and its first, whole-image OCR found some text; ``never`` never."""
    if rule != "auto" or max(size) < MIN_SHRINK * TILE_PX:
        return False
    return isinstance(first_pass, dict) and any(str(t).strip() for t in first_pass.get("labels") or [])


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles begin along one side: evenly spread, neighbours overlapping by at least *overlap*."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (n - 1)
    return [round(i * step) for i in range(n)]


def grid(size: tuple[int, int], tile: int = TILE_PX, overlap: int = OVERLAP_PX) -> list[Box]:
    """The tiles covering an image of *size*, row by row, each at most *tile* pixels square."""
    width, height = size
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, overlap)
        for x in _starts(width, tile, overlap)
    ]


def _cores(starts: list[int], ends: list[int], length: int) -> list[tuple[float, float]]:
    """Each tile's share of one side: up to the middle of its overlap with each neighbour."""
    bounds = [0.0] + [(ends[i] + starts[i + 1]) / 2 for i in range(len(starts) - 1)] + [float(length)]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def merge(tiles: Sequence[Box], results: Sequence[Any], size: tuple[int, int]) -> dict[str, list[Any]]:
    """One ``<OCR_WITH_REGION>`` result for the whole image from its tiles' results, in reading order."""
    xs = sorted({t[0] for t in tiles})
    ys = sorted({t[1] for t in tiles})
    x_cores = dict(zip(xs, _cores(xs, [_end(tiles, 0, x) for x in xs], size[0]), strict=True))
    y_cores = dict(zip(ys, _cores(ys, [_end(tiles, 1, y) for y in ys], size[1]), strict=True))
    regions: list[tuple[list[float], str]] = []
    for (left, top, _r, _b), result in zip(tiles, results, strict=True):
        if not isinstance(result, dict):
            continue
        for quad, label in zip(result.get("quad_boxes") or [], result.get("labels") or [], strict=False):
            if not str(label).strip() or len(quad) != 8:
                continue
            placed = [float(v) + (left if i % 2 == 0 else top) for i, v in enumerate(quad)]
            cx, cy = sum(placed[0::2]) / 4, sum(placed[1::2]) / 4
            (x0, x1), (y0, y1) = x_cores[left], y_cores[top]
            if x0 <= cx < x1 and y0 <= cy < y1:
                regions.append((placed, str(label).strip()))
    ordered = reading_order(regions)
    return {"quad_boxes": [q for q, _ in ordered], "labels": [t for _, t in ordered]}


def _end(tiles: Sequence[Box], axis: int, start: int) -> int:
    return next(t[axis + 2] for t in tiles if t[axis] == start)


def reading_order(regions: list[tuple[list[float], str]]) -> list[tuple[list[float], str]]:
    """Lines top to bottom, each left to right: a region joins the line whose height holds its centre."""
    lines: list[tuple[float, float, list[tuple[list[float], str]]]] = []
    for region in sorted(regions, key=lambda r: min(r[0][1::2])):
        ys = region[0][1::2]
        top, bottom, centre = min(ys), max(ys), sum(ys) / 4
        for i, (line_top, line_bottom, members) in enumerate(lines):
            if line_top <= centre <= line_bottom:
                members.append(region)
                lines[i] = (min(line_top, top), max(line_bottom, bottom), members)
                break
        else:
            lines.append((top, bottom, [region]))
    return [r for _, _, members in lines for r in sorted(members, key=lambda r: min(r[0][0::2]))]
