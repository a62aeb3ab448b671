"""OCR in tiles: the grid, each region counted once in page coordinates, reading order, and when it applies.

Pure geometry here (``daemon.tiling``); the pipeline and the tiny Florence-2 in
tests/model/test_tiles.py.
"""

from __future__ import annotations

import random

import pytest

from daemon.tiling import MIN_SHRINK, OVERLAP_PX, TILE_PX, grid, merge, reading_order, wants_tiles

A4_300DPI = (2480, 3508)


@pytest.mark.parametrize("size", [A4_300DPI, (1600, 1200), (769, 5000), (3000, 500), (700, 700), (768, 768)])
def test_the_tiles_cover_the_image_at_full_resolution_and_overlap(size: tuple[int, int]) -> None:
    tiles = grid(size)
    w, h = size
    assert all(r - x <= TILE_PX and b - y <= TILE_PX for x, y, r, b in tiles)
    assert all(0 <= x < r <= w and 0 <= y < b <= h for x, y, r, b in tiles)
    for axis, length in ((0, w), (1, h)):
        starts = sorted({t[axis] for t in tiles})
        ends = sorted({t[axis + 2] for t in tiles})
        assert starts[0] == 0 and ends[-1] == length  # nothing left out at either end
        assert all(ends[i] - starts[i + 1] >= OVERLAP_PX for i in range(len(starts) - 1))
    if max(size) <= TILE_PX:
        assert tiles == [(0, 0, w, h)]


def test_an_a4_page_at_300_dpi_takes_24_tiles() -> None:
    assert len(grid(A4_300DPI)) == 4 * 6  # the cost the README quotes: 24 OCR runs for the page


def _words(size: tuple[int, int], n: int, seed: int) -> list[tuple[list[float], str]]:
    """Words up to OVERLAP_PX wide at random places, on lines 40 px apart (no two overlapping)."""
    rng = random.Random(seed)
    words, taken = [], []
    while len(words) < n:
        width, line = rng.randint(20, OVERLAP_PX), rng.randrange(1, size[1] // 40 - 1)
        x, y = rng.uniform(0, size[0] - width), line * 40.0
        if any(ln == line and not (x + width < a or x > b) for ln, a, b in taken):
            continue
        taken.append((line, x - 5, x + width + 5))
        words.append(([x, y, x + width, y, x + width, y + 20, x, y + 20], f"w{len(words)}"))
    return words


def _seen_by(tile: tuple[int, int, int, int], words: list[tuple[list[float], str]]) -> dict:
    """What a tile's OCR reads: the words wholly inside it, in its own coordinates."""
    x0, y0, x1, y1 = tile
    inside = [
        (q, t)
        for q, t in words
        if x0 <= min(q[0::2]) and max(q[0::2]) <= x1 and y0 <= min(q[1::2]) and max(q[1::2]) <= y1
    ]
    return {
        "quad_boxes": [[v - (x0 if i % 2 == 0 else y0) for i, v in enumerate(q)] for q, _ in inside],
        "labels": [t for _, t in inside],
    }


@pytest.mark.parametrize("seed", range(5))
def test_every_word_comes_back_once_in_page_coordinates_and_reading_order(seed: int) -> None:
    words = _words(A4_300DPI, 300, seed)
    tiles = grid(A4_300DPI)
    merged = merge(tiles, [_seen_by(t, words) for t in tiles], A4_300DPI)
    expected = reading_order(words)
    assert merged["labels"] == [t for _, t in expected]  # each once, none lost, lines top down, left to right
    for got, (want, _) in zip(merged["quad_boxes"], expected, strict=True):
        assert got == pytest.approx(want)


def test_reading_order_puts_lines_top_down_and_words_left_to_right() -> None:
    def box(x: float, y: float) -> list[float]:
        return [x, y, x + 50, y, x + 50, y + 20, x, y + 20]

    regions = [(box(300, 102), "world"), (box(10, 200), "second"), (box(10, 100), "hello"), (box(150, 98), "big")]
    assert [t for _, t in reading_order(regions)] == ["hello", "big", "world", "second"]


def test_empty_labels_and_broken_boxes_are_left_out() -> None:
    tiles = grid((1000, 600))
    broken = {"quad_boxes": [[1, 2, 3], [0, 0, 9, 0, 9, 9, 0, 9], [0, 0, 9, 0, 9, 9, 0, 9]], "labels": ["x", " ", "ok"]}
    merged = merge(tiles, [broken, {"quad_boxes": [], "labels": []}], (1000, 600))
    assert merged == {"quad_boxes": [[0, 0, 9, 0, 9, 9, 0, 9]], "labels": ["ok"]}


def test_tiles_only_for_big_images_whose_first_read_found_text() -> None:
    big, small = (int(TILE_PX * MIN_SHRINK), 900), (int(TILE_PX * MIN_SHRINK) - 1, 900)
    text = {"quad_boxes": [[0] * 8], "labels": ["TOTAL 12.50"]}
    assert wants_tiles(big, text, "auto")
    assert not wants_tiles(small, text, "auto")  # shrunk less than twice: the model reads it well enough
    assert not wants_tiles(big, {"quad_boxes": [], "labels": []}, "auto")  # a photo with no text: no tiles
    assert not wants_tiles(big, {"quad_boxes": [[0] * 8], "labels": ["  "]}, "auto")
    assert not wants_tiles(big, text, "never")
