"""Reading PDFs (a scanner's "scan to folder"): each page drawn as an image for the model.

PDFium (through pypdfium2) draws the pages: no system tools, and the PDF
engine of Chromium, which reads what scanners and office programs write.
PDFium is not thread-safe, not even across documents: every call into it,
closing included, holds :data:`_LOCK` (pypdfium2's own advice). The lock is
taken per page, not per document, so the model thread drawing its next
pages never waits for a decode thread to hash a whole 50-page scan.

A page is drawn at ``pdf.dpi`` but never with more than
:data:`MAX_PAGE_PIXELS`: a page declared 200 inches wide (a "PDF bomb") is
drawn smaller, not refused. Only the first ``pdf.max_pages`` pages are read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from daemon.errors import ImageError
from daemon.imaging import content_key, read_error

log = logging.getLogger(__name__)

_LOCK = threading.RLock()
MAX_PAGE_PIXELS = 40_000_000  # about A3 at 300 dpi
_TAIL = 2048  # where %%EOF must be: the file's end (a scanner still writing has not put it there yet)


@dataclass(frozen=True)
class Pages:
    """What one PDF is for the index: its pages' content keys (the model's input), and page 1's size."""

    path: str
    keys: tuple[str, ...]  # one per page read, as imaging.content_key of its drawing
    total: int  # pages in the file (more than len(keys) past pdf.max_pages)
    width: int
    height: int
    format: str = "PDF"

    @property
    def content_key(self) -> str:
        """The document's key: the same pages drawn the same, whatever else a re-save changed."""
        return hashlib.sha256(("pdf:" + ",".join(self.keys)).encode()).hexdigest()


def is_pdf(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(".pdf")


def read(path: str, dpi: int, max_pages: int) -> Pages:
    """Draw every page (up to *max_pages*) once to know it; ImageError with the reason if the file is bad."""
    keys: list[str] = []
    size = (0, 0)
    with _document(path) as doc:
        total = _count(doc)
        if total == 0:
            raise ImageError(path, "the PDF has no pages")
        for i in range(min(total, max_pages)):
            page = _draw(path, doc, i, dpi)
            keys.append(content_key(page))
            size = size if i else page.size
    if total > max_pages:
        log.warning("%s: only the first %d of its %d pages are read (pdf.max_pages)", path, max_pages, total)
    return Pages(path, tuple(keys), total, *size)


def pages(path: str, numbers: Sequence[int], dpi: int) -> list[Image.Image]:
    """Pages *numbers* (1-based) drawn as RGB images; ImageError if the file or a page cannot be read."""
    with _document(path) as doc:
        total = _count(doc)
        missing = [n for n in numbers if not 1 <= n <= total]
        if missing:
            raise ImageError(path, f"the PDF has {total} pages: there is no page {missing[0]}")
        return [_draw(path, doc, n - 1, dpi) for n in numbers]


def first_page(path: str, dpi: int = 200) -> Image.Image:
    """Page 1, for what shows a PDF as one picture (a desktop thumbnail)."""
    return pages(path, [1], dpi)[0]


def protection(path: str) -> str | None:
    """Why our metadata must not be written into this PDF (encrypted, signed), or None."""
    import pypdfium2.raw as raw

    with _document(path) as doc, _LOCK:
        encrypted = raw.FPDF_GetSecurityHandlerRevision(doc) != -1
        signed = raw.FPDF_GetSignatureCount(doc) > 0
    if encrypted:
        return "the PDF is encrypted: writing into it would need its password"
    if signed:
        return "the PDF is signed: any change to it would break the signature"
    return None


@contextmanager
def _document(path: str) -> Iterator[Any]:
    """The open PDF (opened and closed under the lock); ImageError naming what is wrong with the file."""
    import pypdfium2 as pdfium

    _check_complete(path)
    with _LOCK:
        try:
            doc = pdfium.PdfDocument(path)
        except pdfium.PdfiumError as exc:
            raise ImageError(path, _reason(str(exc))) from None
    try:
        yield doc
    finally:
        with _LOCK:
            doc.close()


def _count(doc: Any) -> int:
    with _LOCK:
        return len(doc)


def _check_complete(path: str) -> None:
    """A PDF ends with %%EOF: without it the file is still being written (or was cut short)."""
    try:
        with open(path, "rb") as f:
            head = f.read(5)
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL))
            tail = f.read()
    except OSError as exc:
        raise read_error(path, exc) from None
    if not head:
        raise ImageError(path, "empty file (0 bytes)")
    if head != b"%PDF-":
        raise ImageError(path, "not a PDF: it does not start with %PDF-")
    if b"%%EOF" not in tail:
        raise ImageError(
            path,
            "the PDF is incomplete (no %%EOF at its end): still being written or cut short, read again when it changes",
        )


def _draw(path: str, doc: Any, index: int, dpi: int) -> Image.Image:
    """Page *index* (0-based) at *dpi*, or smaller where that would exceed MAX_PAGE_PIXELS."""
    import pypdfium2 as pdfium

    try:
        with _LOCK:
            image = _draw_locked(path, doc, index, dpi)
    except pdfium.PdfiumError as exc:
        raise ImageError(path, f"page {index + 1} cannot be drawn: {exc}") from None
    if image.width < 2 or image.height < 2:
        raise ImageError(path, f"page {index + 1} is only {image.width}x{image.height} pixels: too small to describe")
    return image


def _draw_locked(path: str, doc: Any, index: int, dpi: int) -> Image.Image:
    """_draw's PDFium calls, under the lock."""
    page = doc[index]
    try:
        width, height = page.get_size()  # in points, 72 to the inch
        scale = dpi / 72
        area = width * height * scale * scale
        if area > MAX_PAGE_PIXELS:
            scale *= (MAX_PAGE_PIXELS / area) ** 0.5 * 0.999  # PDFium rounds the bitmap up
            inches = f"{width / 72:.0f}x{height / 72:.0f} inches"
            log.info("%s: page %d is %s: drawn at %.0f dpi", path, index + 1, inches, scale * 72)
        bitmap = page.render(scale=scale, may_draw_forms=False)
        try:
            return bitmap.to_pil().convert("RGB")  # a copy: the bitmap's memory goes with close()
        finally:
            bitmap.close()
    finally:
        page.close()


def _reason(pdfium_error: str) -> str:
    """PDFium's load error in words a person can act on."""
    if "password" in pdfium_error.lower():
        return "the PDF is password-protected: it cannot be read without its password"
    if "format" in pdfium_error.lower() or "file" in pdfium_error.lower():
        return f"damaged PDF: PDFium cannot read it ({pdfium_error})"
    return f"cannot read this PDF: {pdfium_error}"
