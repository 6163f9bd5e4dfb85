"""Any Pillow image mode to 8-bit RGB, scaling high-bit-depth modes by their range.

Pillow's ``convert("RGB")`` clips 16-bit and 32-bit integer pixels to 0..255 and truncates
floats, so a 16-bit greyscale PNG comes out almost all white and a 0..1 float TIFF all
black. Those modes are first scaled to 8 bits here:

- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit greyscale): ``v * 255 / 65535``, rounded;
- ``I`` (32-bit integer): the same when every value lies in 0..65535 (16-bit PNG/TIFF/PPM
  data, the usual source), otherwise stretched from its minimum to its maximum;
- ``F`` (32-bit float): values in 0..1 times 255, values in 0..255 as they are, anything
  else stretched from its minimum to its maximum; NaN counts as the minimum.

A greyscale transparency value (PNG ``tRNS``) is kept as an alpha channel, so the image is
composited on white like any other transparent image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
HIGH_DEPTH = (*SIXTEEN_BIT, "I", "F")


def _from_16bit(arr: np.ndarray) -> np.ndarray:
    # (v * 255 + 32767) // 65535 rounds v * 255 / 65535 and maps c * 257 back to c exactly.
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:  # a constant image: its value, clipped
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    out = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.rint(out).astype(np.uint8)


def _scale(img: Any) -> np.ndarray:
    """8-bit greyscale pixels of a high-bit-depth image (see the module docstring)."""
    arr = np.asarray(img)
    if img.mode in SIXTEEN_BIT:
        return _from_16bit(arr)
    if img.mode == "I":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        return _from_16bit(arr) if lo >= 0 and hi <= 65535 else _stretch(arr, lo, hi)
    finite = np.isfinite(arr)
    if not finite.all():
        fill = float(arr[finite].min()) if finite.any() else 0.0
        arr = np.where(finite, arr, np.float32(fill))
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(arr * np.float32(255.0)).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(arr).astype(np.uint8)
    return _stretch(arr, lo, hi)


def to_eight_bit(img: Any) -> Any:
    """``img`` itself unless its mode is high-bit-depth; then an ``L`` (or ``LA``, with the
    transparency value as alpha) image scaled by the mode's range."""
    from PIL import Image

    if img.mode not in HIGH_DEPTH:
        return img
    grey = Image.fromarray(_scale(img), "L")
    key = img.info.get("transparency")
    if isinstance(key, int | float) and img.mode != "F":
        alpha = np.where(np.asarray(img) == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha, "L")))
    return grey


def to_rgb(img: Any) -> Any:
    """An RGB image: high-bit-depth modes scaled (see :func:`to_eight_bit`), alpha and
    transparency composited on white, every other mode converted by Pillow."""
    from PIL import Image

    img = to_eight_bit(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")
