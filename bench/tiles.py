"""What reading a page in tiles costs, next to the one-pass path every image takes.

A 300-dpi A4 page (2480×3508, text drawn with Pillow) through a Florence-2 of
the real base (or large) architecture with random weights and Microsoft's
real tokenizer and processor (as ``bench/throughput.py`` builds it), every
generation forced to ``--tokens`` new tokens on both sides:

- one pass: ``FlorenceAnalyzer.analyze`` on the page, the configured tasks
  (the default four), as any image today;
- tiles: ``<OCR_WITH_REGION>`` alone on the page's 24 tiles of 768 px, in
  batches of ``--batch``, then the merge (``daemon.tiling``).

    python bench/tiles.py                  # ~2 min on 2 CPU cores
    python bench/tiles.py --arch large --device cuda --batch 24 --tokens 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw

from bench.throughput import forced_analyzer
from daemon.model.tiles import OCR_TASK
from daemon.tasks import DEFAULT_TASKS
from daemon.tiling import grid, merge


def page() -> Image.Image:
    """A scanned letter: 60 lines of 10-point text at 300 dpi (about 40 px high)."""
    im = Image.new("RGB", (2480, 3508), "white")
    draw = ImageDraw.Draw(im)
    for i in range(60):
        draw.text((200, 250 + 50 * i), f"Line {i}: invoice 2026-{i:03d}, total due 12.50 EUR", fill="black")
    return im


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("base", "large"), default="base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    analyzer = forced_analyzer(args.arch, args.device, args.tokens, args.batch)
    scan = page()

    started = time.perf_counter()
    analyzer.analyze([scan])
    one_pass = time.perf_counter() - started

    tiles = grid(scan.size)
    started = time.perf_counter()
    crops = [scan.crop(t) for t in tiles]
    found = []
    for i in range(0, len(crops), args.batch):
        found += analyzer.run_task(crops[i : i + args.batch], OCR_TASK)
    merge(tiles, found, scan.size)
    tiled = time.perf_counter() - started

    print(f"{analyzer.describe()}, {args.tokens} tokens per generation")
    print(f"one pass, {len(DEFAULT_TASKS)} tasks on the page:  {one_pass:6.2f} s")
    print(f"{len(tiles)} tiles, {OCR_TASK} alone:       {tiled:6.2f} s  ({len(tiles) / tiled:.2f} tiles/s)")
    print(f"a page read in tiles costs {(one_pass + tiled) / one_pass:.1f}x the one pass")


if __name__ == "__main__":
    main()
