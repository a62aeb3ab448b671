"""Regions in Florence-2 results, and drawing them onto a copy of an image.

Every task's parsed result reduces to shapes: boxes (``bboxes``),
quadrilaterals (``quad_boxes``, OCR lines) and polygons (segmentation
masks), each with a label. The web page draws the same shapes as SVG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# Colour-blind-safe palette (Okabe-Ito), cycled per label.
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#FFFFFF"]


@dataclass(frozen=True)
class Shape:
    kind: str  # "box" or "polygon"
    points: tuple[float, ...]  # box: x1, y1, x2, y2; polygon: x1, y1, x2, y2, ...
    label: str
    task: str = ""

    def polygon(self) -> list[tuple[float, float]]:
        if self.kind == "box":
            x1, y1, x2, y2 = self.points
            return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
        return list(zip(self.points[0::2], self.points[1::2], strict=False))  # an odd last value is dropped


def shapes(result: Any, task: str = "") -> list[Shape]:
    """The regions in one task's parsed result (none for a text result)."""
    if not isinstance(result, dict):
        return []
    out: list[Shape] = []
    box_labels = result.get("labels") or result.get("bboxes_labels") or []
    for i, box in enumerate(result.get("bboxes") or []):
        if len(box) == 4:
            out.append(Shape("box", tuple(float(v) for v in box), _label(box_labels, i), task))
    for i, quad in enumerate(result.get("quad_boxes") or []):
        if len(quad) == 8:
            out.append(Shape("polygon", tuple(float(v) for v in quad), _label(result.get("labels") or [], i), task))
    poly_labels = result.get("labels") or result.get("polygons_labels") or []
    for i, instance in enumerate(result.get("polygons") or []):
        for poly in instance:  # one instance may be several polygons
            if len(poly) >= 6:
                out.append(Shape("polygon", tuple(float(v) for v in poly), _label(poly_labels, i), task))
    return out


def _label(labels: list[Any], i: int) -> str:
    return str(labels[i]) if i < len(labels) and labels[i] is not None else ""


def colour(label: str) -> str:
    """The same label gets the same colour on every image."""
    return PALETTE[sum(label.encode()) % len(PALETTE)]


def draw(image: Image.Image, found: list[Shape]) -> Image.Image:
    """A copy of *image* with each shape outlined and labelled."""
    out = image.convert("RGB")  # always a copy; the original is never touched
    pen = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 50)))
    for s in found:
        c = colour(s.label)
        pts = s.polygon()
        pen.line([*pts, pts[0]], fill=c, width=width, joint="curve")
        if s.label:
            x, y = min(p[0] for p in pts), min(p[1] for p in pts)
            left, top, right, bottom = pen.textbbox((x, y), s.label, font=font)
            y = max(0, y - (bottom - top) - 2 * width)
            left, top, right, bottom = pen.textbbox((x, y), s.label, font=font)
            pen.rectangle((left - width, top - width, right + width, bottom + width), fill=c)
            pen.text((x, y), s.label, fill="black", font=font)
    return out
