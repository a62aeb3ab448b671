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


def write_signed(path: Path) -> Path:
    """A one-page PDF with a signature (its /Sig dictionary; the bytes it signs are not checked by readers here)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] /SigFlags 3 >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Annots [4 0 R] >>",
        b"<< /Type /Annot /Subtype /Widget /FT /Sig /T (Signature1) /Rect [0 0 0 0] /F 132 /P 3 0 R /V 5 0 R >>",
        b"<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /adbe.pkcs7.detached /ByteRange [0 10 20 10] "
        b"/Contents <" + b"0" * 64 + b"> >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path
