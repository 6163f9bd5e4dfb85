"""Text inside images: a wrapper around RapidOCR (PP-OCR detection and recognition run by
onnxruntime; the models ship in its wheel, so it works offline).

Images are scaled down to at most :data:`MAX_SIDE` pixels on their longer side before
detection (a 12 MP photo otherwise takes many seconds on a CPU, and text too small to read
at 1600 px is rarely worth finding); boxes are mapped back to the original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmsearch.errors import VlmsearchError

MAX_SIDE = 1600
"""Longest side, in pixels, an image is scaled down to before OCR."""
EXTRA_HINT = "OCR needs the ocr extra: pip install 'vlmsearch[ocr]'"


@dataclass
class OcrLine:
    text: str
    box: list[list[float]]  # 4 corner points [x, y] in the original image's pixels
    score: float  # the recogniser's confidence, 0..1

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "box": self.box, "score": self.score}


def check_available() -> None:
    """Fail with a one-line error, before any work, when RapidOCR is not installed."""
    import importlib.util

    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        raise VlmsearchError(EXTRA_HINT)


class OcrEngine:
    """Reads the lines of text in an image; the RapidOCR engine is built on first use."""

    name = "rapidocr-onnxruntime"

    def __init__(self, max_side: int = MAX_SIDE, min_score: float = 0.5) -> None:
        if max_side < 32:
            raise VlmsearchError(f"the OCR image size cap must be at least 32 (got {max_side})")
        self.max_side = max_side
        self.min_score = min_score  # lines recognised with less confidence are dropped
        self._engine: Any = None

    def _load(self) -> Any:
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError:
                raise VlmsearchError(EXTRA_HINT) from None
            self._engine = RapidOCR()
        return self._engine

    def describe(self) -> dict[str, Any]:
        """What made the text (kept in the manifest and per row)."""
        try:
            from importlib.metadata import version

            v = version("rapidocr-onnxruntime")
        except Exception:  # noqa: BLE001 - a version is a nicety
            v = None
        return {"engine": self.name, "version": v, "max_side": self.max_side}

    def read(self, image: Any) -> list[OcrLine]:
        """The lines of text in a PIL image (RGB), top to bottom; [] when there is none."""
        engine = self._load()
        w, h = image.size
        scale = min(1.0, self.max_side / max(w, h, 1))
        if scale < 1.0:
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))))
        # RapidOCR works in OpenCV's BGR order (RGB input lost spaces between words here)
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        result, _ = engine(bgr)
        lines = []
        for box, text, score in result or []:
            if float(score) < self.min_score or not str(text).strip():
                continue
            pts = [[round(float(x) / scale, 1), round(float(y) / scale, 1)] for x, y in box]
            lines.append(OcrLine(str(text), pts, round(float(score), 4)))
        lines.sort(key=lambda ln: (min(p[1] for p in ln.box), min(p[0] for p in ln.box)))
        return lines
