"""Scanner-like PDFs for tests and benches: pages of printed lines, saved as a scanner saves them.

A scanner's "scan to folder" writes one JPEG image per page into a PDF,
with the resolution it scanned at; Pillow's PDF writer does exactly that.
Each page has a tint of its own, so a model that reads colours (the tests'
FakeAnalyzer) reads a different word on every page.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

A4_300_DPI = (2480, 3508)


def scan_page(number: int, size: tuple[int, int] = A4_300_DPI, tint: int | None = None) -> Image.Image:
    """One page: a tinted sheet with lines of small print (*tint*: its red level, else one per page number)."""
    red = 250 - 40 * (number % 6) if tint is None else tint
    page = Image.new("RGB", size, (red, 245, 235))
    draw = ImageDraw.Draw(page)
    for line in range(size[1] // 60 - 2):
        draw.text((150, 120 + 60 * line), f"page {number} line {line}: the quarterly figures, as agreed", fill="black")
    return page


def write_scan(path: Path, pages: int = 3, dpi: int = 300, tints: list[int] | None = None) -> Path:
    """A PDF of *pages* scanned pages at *dpi* (page i tinted tints[i] if given)."""
    images = [scan_page(i + 1, tint=tints[i] if tints else None) for i in range(pages)]
    images[0].save(path, "PDF", resolution=dpi, save_all=True, append_images=images[1:], quality=85)
    return path
