"""What a scanned PDF costs: drawing its pages, reading them in tiles, and the whole pipeline, next to images.

A scanner-like image-only PDF (``daemon.testing.documents.write_scan``: A4
at 300 dpi, lines of small print, one JPEG per page) of ``--pages`` pages,
drawn at the daemon's default 200 dpi (1654×2339), all measured in one run
(figures to quote as ratios: a shared machine is noisy):

1. rendering, no model: pages/s of ``pdf.read`` (draw + content key, what
   the decode thread does to know a PDF) and of ``pdf.pages`` (draw only,
   what the model thread does, ``--batch`` pages at a time), next to
   today's single-image path, ``imaging.decode`` + ``content_key``, on the
   same drawn pages saved as PNG and as JPEG files (and on the 300-dpi
   JPEGs the scanner put into the PDF), in interleaved rounds, the best
   round counting;
2. tiling, one drawn page through a Florence-2 of the real base (or large)
   architecture with random weights and Microsoft's real tokenizer and
   processor (``bench.throughput.random_florence``), every generation
   forced to ``--tokens`` new tokens: the one pass
   (``FlorenceAnalyzer.analyze``, the four default tasks; the better of one
   run before and one after the tiles) against the one pass plus
   ``<OCR_WITH_REGION>`` on the page's 12 tiles in batches of ``--batch``
   (``daemon.tiling``; forced: random weights find no text for ``auto``);
3. end to end, the same analyzer in the real pipeline
   (``runner.open_pipeline``, an SQLite index in a temp dir, no metadata
   writing, ``ocr.tiles = "auto"``): the PDF offered and drained, split
   into drawing (``pdf.read`` + ``pdf.pages``) and model; the same pages as
   separate PNG files into a fresh index; then the PDF re-saved by pypdfium2
   (other bytes, the same pages), which must cost no model run.

    python bench/pdf.py                    # ~5 min on 2 CPU cores (make bench)
    python bench/pdf.py --pages 20 --tokens 8   # a 20-page document: ~15 min on 2 CPU cores
    python bench/pdf.py --arch large --device cuda --batch 8 --tokens 64

The defaults (6 pages, 2 tokens) keep ``make bench`` to about five minutes
on the 2-core build machine, where each page costs the model 10 to 15 s
and a page's 12 tiles one to two minutes; drawing and the index scale with
the pages, the model's share of each page with the tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

import daemon.service.pipeline as pipeline_module
from bench.throughput import forced_analyzer
from daemon import pdf
from daemon.config import Config, PdfConfig
from daemon.imaging import content_key, decode
from daemon.index import records
from daemon.model.analyze import FlorenceAnalyzer
from daemon.model.tiles import OCR_TASK
from daemon.service.runner import open_pipeline
from daemon.tasks import DEFAULT_TASKS
from daemon.testing.documents import scan_page, write_scan
from daemon.testing.helpers import make_config
from daemon.tiling import grid, merge

DPI = PdfConfig().dpi  # the daemon's default, 200


class Clock:
    """Seconds spent and calls made in the functions it wraps, by name (thread-safe)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.perf_counter() - started
                    self.calls[name] += 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


@contextmanager
def timing(clock: Clock, analyzer: FlorenceAnalyzer) -> Iterator[None]:
    """Time what the pipeline calls: drawing (``pdf``), decoding and hashing images, the model."""
    targets: list[tuple[Any, str, str]] = [
        (pdf, "read", "pdf.read (draw + key)"),
        (pdf, "pages", "pdf.pages (draw)"),
        (pipeline_module, "decode", "decode"),
        (pipeline_module, "content_key", "content_key"),
        (analyzer, "preprocess", "preprocess"),
        (analyzer, "analyze", "model"),
        (analyzer, "run_task", "tiles"),
    ]
    saved = [(owner, attr, owner.__dict__.get(attr)) for owner, attr, _ in targets]
    for owner, attr, name in targets:
        setattr(owner, attr, clock.wrap(name, getattr(owner, attr)))
    try:
        yield
    finally:
        for owner, attr, original in saved:
            if original is None:
                delattr(owner, attr)  # an instance's method: the class's again
            else:
                setattr(owner, attr, original)


def make_files(folder: Path, n: int) -> tuple[Path, list[Path], list[Path], list[Path]]:
    """The scan, and its pages drawn at DPI saved as PNG and JPEG files, and as the scanner's 300-dpi JPEGs."""
    scan = write_scan(folder / "scan.pdf", pages=n)
    pngs, jpgs, scanned = [], [], []
    for number in range(1, n + 1):
        [page] = pdf.pages(str(scan), [number], DPI)
        pngs.append(folder / f"page{number:03d}.png")
        page.save(pngs[-1])
        jpgs.append(folder / f"page{number:03d}.jpg")
        page.save(jpgs[-1], quality=85)
        scanned.append(folder / f"scan{number:03d}.jpg")
        scan_page(number).save(scanned[-1], quality=85)  # as write_scan puts it into the PDF
    return scan, pngs, jpgs, scanned


def rendering(scan: Path, images: dict[str, list[Path]], n: int, batch: int, rounds: int) -> dict[str, float]:
    """Pages per second of each way to a page's pixels, the best of *rounds* interleaved rounds."""

    def read() -> None:
        pdf.read(str(scan), DPI, n)

    def draw() -> None:
        for first in range(1, n + 1, batch):
            pdf.pages(str(scan), list(range(first, min(first + batch, n + 1))), DPI)

    def decoder(paths: list[Path]) -> Callable[[], None]:
        def run() -> None:
            for path in paths:
                content_key(decode(path).image)

        return run

    ways: dict[str, Callable[[], None]] = {"PDF, pdf.read (draw + key)": read, "PDF, pdf.pages (draw)": draw}
    ways.update({f"{name}, decode + key": decoder(paths) for name, paths in images.items()})
    best = {name: float("inf") for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: n / seconds for name, seconds in best.items()}


def build_analyzer(args: argparse.Namespace) -> FlorenceAnalyzer:
    """Random weights of the real architecture, every generation forced to exactly --tokens tokens."""
    analyzer = forced_analyzer(args.arch, args.device, args.tokens, args.batch)
    analyzer.run_task([Image.new("RGB", (64, 64))], OCR_TASK)  # warm-up, not timed: threads, allocator
    return analyzer


def tiling(analyzer: FlorenceAnalyzer, page: Image.Image) -> tuple[float, float, int]:
    """Seconds of the one pass (the better of one before and one after the tiles) and of the tiles
    alone on *page*, as read_in_tiles runs them; how many tiles."""

    def one_pass() -> float:
        started = time.perf_counter()
        analyzer.analyze([page])
        return time.perf_counter() - started

    before = one_pass()
    tiles = grid(page.size)
    started = time.perf_counter()
    found: list[Any] = []
    for i in range(0, len(tiles), analyzer.batch_size):
        found += analyzer.run_task([page.crop(t) for t in tiles[i : i + analyzer.batch_size]], OCR_TASK)
    merge(tiles, found, page.size)
    tiled = time.perf_counter() - started
    return min(before, one_pass()), tiled, len(tiles)


def index_config(folder: Path) -> Config:
    """A pipeline's config as the tests make it: an SQLite index under *folder*, no metadata writing."""
    return make_config(folder, metadata={"write": False})  # the model's settings are the analyzer's own


def drained(pipeline: Any, paths: list[Path], clock: Clock) -> tuple[float, dict[str, float], dict[str, int]]:
    """Offer *paths*, drain the queue: wall seconds, and the clock's seconds and calls for that."""
    clock.reset()
    started = time.perf_counter()
    pipeline.offer(paths)
    pipeline.drain()
    return time.perf_counter() - started, dict(clock.seconds), dict(clock.calls)


def indexed(pipeline: Any, path: Path) -> tuple[str, int]:
    """The file's state in the index and how many pages it has there."""
    with pipeline.db.transaction() as s:
        info = records.file_info(s, str(path)) or {"state": "missing"}
    return info["state"], len(info.get("pages") or [])


Run = tuple[float, dict[str, float], dict[str, int]]


def end_to_end(analyzer: FlorenceAnalyzer, scan: Path, pngs: list[Path], tmp: Path) -> dict[str, Any]:
    """The PDF, its pages as PNG files (a fresh index), and the PDF re-saved, through the real pipeline."""
    import pypdfium2 as pdfium

    clock = Clock()
    out: dict[str, Any] = {}
    with timing(clock, analyzer), ExitStack() as stack:
        docs = stack.enter_context(open_pipeline(index_config(tmp / "pdf-index"), analyzer))
        out["pdf"] = drained(docs, [scan], clock)
        out["pdf_indexed"] = indexed(docs, scan)
        images = stack.enter_context(open_pipeline(index_config(tmp / "png-index"), analyzer))
        out["png"] = drained(images, pngs, clock)
        out["png_indexed"] = sum(indexed(images, p)[0] == "indexed" for p in pngs)
        document = pdfium.PdfDocument(str(scan))
        resaved = scan.with_name("scan-resaved.pdf")
        document.save(str(resaved))
        document.close()
        out["resaved_bytes_differ"] = resaved.read_bytes() != scan.read_bytes()
        out["resaved"] = drained(docs, [resaved], clock)
        out["resaved_indexed"] = indexed(docs, resaved)
    return out


def split(run: Run, n: int) -> str:
    """One pipeline run: total, per page, and the seconds in each timed part (calls where they tell)."""
    seconds, parts, calls = run
    shown = ", ".join(f"{name} {s:.2f} s" for name, s in sorted(parts.items(), key=lambda kv: -kv[1]))
    runs = calls.get("model", 0) + calls.get("tiles", 0)
    return f"{seconds:6.2f} s, {seconds / n:5.2f} s/page ({shown}; {runs} model calls)"


def report_rendering(rates: dict[str, float], n: int) -> None:
    print(f"1. rendering {n} pages of a 300-dpi scan at {DPI} dpi, no model (best round); images: the same pages")
    png = next(rate for name, rate in rates.items() if name.startswith("PNG"))
    for name, rate in rates.items():
        print(f"   {name:46} {rate:6.2f} pages/s  {rate / png:5.2f}x the PNG")


def report_tiling(one_pass: float, tiles: float, count: int, size: tuple[int, int]) -> None:
    print(f"2. tiling one drawn page ({size[0]}x{size[1]})")
    print(f"   one pass, {len(DEFAULT_TASKS)} tasks:              {one_pass:7.2f} s  {1 / one_pass:6.3f} pages/s")
    both = one_pass + tiles
    print(f"   one pass + {count} tiles ({OCR_TASK}): {both:7.2f} s  {1 / both:6.3f} pages/s")
    print(f"   a page read in tiles costs {both / one_pass:.1f}x the one pass ({count / tiles:.2f} tiles/s)")


def report_end_to_end(e2e: dict[str, Any], n: int) -> None:
    print(f"3. end to end, the real pipeline (SQLite index, no metadata writing, ocr.tiles = auto), {n} pages")
    state, pages = e2e["pdf_indexed"]
    print(f"   PDF, one document:        {split(e2e['pdf'], n)}; {state}, {pages} pages")
    print(f"   {n} PNG files, one a page: {split(e2e['png'], n)}; {e2e['png_indexed']} indexed")
    tiled = e2e["pdf"][2].get("tiles", 0) + e2e["png"][2].get("tiles", 0)
    if not tiled:
        print("   no page was read in tiles: the first pass of random weights finds no text (see 2. for their cost)")
    print(f"   the PDF costs {e2e['pdf'][0] / e2e['png'][0]:.2f}x its pages as PNG files", end="")
    rest = [(run[0] - run[1].get("model", 0.0) - run[1].get("tiles", 0.0)) / n for run in (e2e["pdf"], e2e["png"])]
    print(f"; outside the model {rest[0]:.3f} against {rest[1]:.3f} s/page ({rest[0] / rest[1]:.2f}x)")
    state, pages = e2e["resaved_indexed"]
    runs = e2e["resaved"][2].get("model", 0) + e2e["resaved"][2].get("tiles", 0)
    differ = "other bytes" if e2e["resaved_bytes_differ"] else "THE SAME BYTES"
    print(f"   re-saved by pypdfium2 ({differ}): {split(e2e['resaved'], n)}; {state}, {pages} pages")
    print(f"   {runs} model runs for the re-saved PDF, {e2e['resaved'][0] / e2e['pdf'][0]:.3f}x the first offer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=6, help="pages of the scan (default 6)")
    parser.add_argument("--tokens", type=int, default=2, help="new tokens per generation, forced (default 2)")
    parser.add_argument("--arch", choices=("base", "large"), default="base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=4, help="pages (and tiles) per model batch (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the rendering part; the best counts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-pdf-") as folder:
        tmp = Path(folder)
        scan, pngs, jpgs, scanned = make_files(tmp, args.pages)
        images = {"PNG": pngs, "JPEG": jpgs, "JPEG at 300 dpi (the scanner's)": scanned}
        rates = rendering(scan, images, args.pages, args.batch, args.rounds)
        report_rendering(rates, args.pages)
        analyzer = build_analyzer(args)
        print(f"{analyzer.describe()}, {args.tokens} tokens per generation")
        [page] = pdf.pages(str(scan), [1], DPI)
        report_tiling(*tiling(analyzer, page), page.size)
        report_end_to_end(end_to_end(analyzer, scan, pngs, tmp), args.pages)
    print(f"bench/pdf.py ran {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
