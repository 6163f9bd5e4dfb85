"""Class-agnostic region proposals for region reranking: multi-scale sliding windows,
optionally replaced by boxes from a user's own detector, plus context expansion."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmsearch.errors import QueryError
from vlmsearch.rerank.base import Box

# Window sides as fractions of the image side, each slid with half-window strides:
# 3x3 windows at 1/2 and 6x6 at 3/10, plus the whole image: 46 regions per image.
DEFAULT_SCALES = (0.5, 0.3)
CONTEXT = 1.5  # ViLD ensembles each crop with a 1.5x-context crop (notes/algorithms.md)


def window_boxes(width: int, height: int, scales: Sequence[float] = DEFAULT_SCALES) -> list[Box]:
    """The whole image, then windows of each scale on a grid with half-window strides."""
    boxes: list[Box] = [(0.0, 0.0, float(width), float(height))]
    for s in scales:
        if not 0.0 < s < 1.0:
            raise QueryError(f"window scales must lie in (0, 1) (got {s})")
        n = math.ceil((1.0 - s) / (s / 2)) + 1
        starts = [(1.0 - s) * i / (n - 1) for i in range(n)]
        for fy in starts:
            for fx in starts:
                boxes.append((fx * width, fy * height, (fx + s) * width, (fy + s) * height))
    return boxes


def region_boxes(
    image: Any,
    scales: Sequence[float] = DEFAULT_SCALES,
    detector_boxes: Sequence[Sequence[float]] | None = None,
) -> list[Box]:
    """The whole image plus the detector's boxes when given, else the sliding windows."""
    w, h = image.size
    if detector_boxes:
        clipped = [clip_box(b, w, h) for b in detector_boxes]
        return [(0.0, 0.0, float(w), float(h))] + [b for b in clipped if b is not None]
    return window_boxes(w, h, scales)


def expand(box: Box, factor: float, width: int, height: int) -> Box:
    """``box`` grown by ``factor`` about its centre, clipped to the image."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return (
        max(0.0, cx - hw),
        max(0.0, cy - hh),
        min(float(width), cx + hw),
        min(float(height), cy + hh),
    )


def clip_box(box: Sequence[float], width: int, height: int) -> Box | None:
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, min(x0, x1)), min(float(width), max(x0, x1))
    y0, y1 = max(0.0, min(y0, y1)), min(float(height), max(y0, y1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return (x0, y0, x1, y1)


def load_boxes_file(path: str | Path) -> dict[str, list[Box]]:
    """Boxes from a detector, as JSON: ``{"relative/or/absolute/path.jpg": [[x0, y0, x1, y1],
    ...], ...}`` in pixels of the original image. Keys are matched against a hit's path
    relative to the collection root, then its absolute path."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise QueryError(f"cannot read boxes file {p}: {e.strerror or e}") from None
    except ValueError as e:
        raise QueryError(f"boxes file {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise QueryError(f"boxes file {p} must map image paths to lists of [x0, y0, x1, y1]")
    out: dict[str, list[Box]] = {}
    for key, boxes in data.items():
        try:
            out[str(key)] = [tuple(float(v) for v in b) for b in boxes]  # type: ignore[misc]
            if any(len(b) != 4 for b in out[str(key)]):
                raise ValueError
        except (TypeError, ValueError):
            raise QueryError(
                f"boxes file {p}: entry {key!r} must be a list of [x0, y0, x1, y1]"
            ) from None
    return out
