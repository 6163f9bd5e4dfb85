"""Model preprocessing with memory bounded by the output, whatever the aspect ratio.

The usual transform resizes the shortest side to ``r`` and keeps the central ``c x c``
square. For a 1 x 20000 strip that resize makes a 224 x 4,480,000 image (3.5 GB, 9.5 s)
of which 224 x 224 is kept; at 1 x 200000 it raised MemoryError. A 163-byte PNG is
enough, so the pixel limit does not help: the bound must be on the size after resizing.

:class:`BoundedTransform` wraps an encoder's transform. Images with an aspect ratio up to
:data:`MAX_ASPECT` go through it unchanged. Beyond that:

- when the transform is a torchvision ``Compose`` with ``Resize(r)`` (shortest side)
  followed by a square ``CenterCrop(c)``, ``c <= r`` (open_clip, timm and EfficientNet
  evaluation transforms), only the kept square is resampled, with Pillow's ``box``
  argument: every output pixel has the same centre and filter support in the source as in
  the full resize, so the result is the same pixels the full resize and crop give, with
  memory for ``c x c`` only;
- a transform whose first resize has a fixed output size is bounded already and is used
  as it is;
- any other transform gets the central part of the image with aspect ratio
  :data:`MAX_ASPECT` (what a centre crop keeps lies well inside it; the resampling grid
  may shift by under a pixel, so such images can differ slightly from the full resize).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_ASPECT = 16
"""Longest side over shortest side up to which images take the transform unchanged:
panoramas stay byte-identical to the plain transform; strips beyond are bounded."""


def is_extreme(width: int, height: int, max_aspect: float = MAX_ASPECT) -> bool:
    return max(width, height) > max_aspect * max(1, min(width, height))


def shortest_crop_box(
    width: int, height: int, resize: int, crop: int
) -> tuple[float, float, float, float]:
    """The source region that a shortest-side resize to ``resize`` (sizes computed as
    torchvision does) followed by a ``crop x crop`` centre crop keeps, in source pixels."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)


# Filter support radius (in source pixels at scale 1) of Pillow's resampling filters.
_SUPPORT = {0: 0.5, 1: 3.0, 2: 1.0, 3: 2.0, 4: 0.5, 5: 1.0}


def _pillow_vertical_first(width: int, height: int, new_w: int, new_h: int) -> bool:
    """Whether Pillow resizing the whole image to ``new_w x new_h`` runs its vertical pass
    first: from Pillow 13 it does when the height shrinks by more than twice as many
    pixels as the width; before, always horizontally first."""
    import PIL

    if int(PIL.__version__.split(".")[0]) < 13:
        return False
    return height - new_h > 0 and height - new_h > 2 * (width - new_w)


def resize_centre_crop(img: Any, resize: int, crop: int, resample: int) -> Any:
    """``crop x crop`` PIL image equal to a shortest-side resize to ``resize`` then a centre
    crop, computed from the kept region only.

    Pillow resamples in two passes and rounds to 8 bits in between, in an order it picks
    from the image and output sizes; a small box can get the other order than the full
    resize, which rounds differently. So the two passes are made here one at a time, in
    the full resize's order, each over the source lines the other pass's filter reaches
    (plus a margin). Each output pixel keeps its centre, scale and filter taps; only the
    float rounding of the box offsets can differ (at most 1 level, rarely).
    """
    w, h = img.size
    x0, y0, x1, y1 = shortest_crop_box(w, h, resize, crop)
    new_w, new_h = round(crop * w / (x1 - x0)), round(crop * h / (y1 - y0))
    support = _SUPPORT.get(resample, 3.0)

    def span(lo: float, hi: float, size: int) -> tuple[int, int]:
        reach = support * max((hi - lo) / crop, 1.0) + 2
        return max(0, int(lo - reach)), min(size, int(hi + reach) + 1)

    if _pillow_vertical_first(w, h, new_w, new_h):
        left, right = span(x0, x1, w)
        cols = img.crop((left, 0, right, h))
        cols = cols.resize((cols.width, crop), resample, box=(0, y0, cols.width, y1))
        return cols.resize((crop, crop), resample, box=(x0 - left, 0, x1 - left, crop))
    top, bottom = span(y0, y1, h)
    rows = img.crop((0, top, w, bottom))
    rows = rows.resize((crop, rows.height), resample, box=(x0, 0, x1, rows.height))
    return rows.resize((crop, crop), resample, box=(0, y0 - top, crop, y1 - top))


def _central(img: Any, max_aspect: float) -> Any:
    w, h = img.size
    if w > h:
        keep = int(max_aspect * h)
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    keep = int(max_aspect * w)
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def _plan(transform: Any) -> tuple[str, Any]:
    """How to bound ``transform``: ("exact", (pre, r, c, resample, post)), ("bounded",
    None) or ("crop", None); see the module docstring."""
    try:
        from torchvision import transforms as T
        from torchvision.transforms.functional import pil_modes_mapping
    except ImportError:
        return "crop", None
    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not steps:
        return "crop", None
    first = next((i for i, t in enumerate(steps) if isinstance(t, T.Resize | T.CenterCrop)), None)
    if first is None:
        return "crop", None
    resize = steps[first]
    if not isinstance(resize, T.Resize):
        return "crop", None
    size = resize.size
    if isinstance(size, list | tuple) and len(size) == 2:
        return "bounded", None  # a fixed output size (squash)
    r = size if isinstance(size, int) else size[0]
    crop = steps[first + 1] if first + 1 < len(steps) else None
    if resize.max_size is not None or not isinstance(crop, T.CenterCrop):
        return "crop", None
    ch, cw = crop.size
    if ch != cw or ch > r or resize.interpolation not in pil_modes_mapping:
        return "crop", None
    resample = pil_modes_mapping[resize.interpolation]
    return "exact", (steps[:first], r, ch, resample, steps[first + 2 :])


class BoundedTransform:
    """``transform`` with memory bounded by its output size (see the module docstring).
    Picklable when ``transform`` is, for DataLoader workers."""

    def __init__(self, transform: Callable[[Any], Any], max_aspect: float = MAX_ASPECT):
        self.transform = transform
        self.max_aspect = max_aspect
        self._kind, self._steps = _plan(transform)

    def __call__(self, img: Any) -> Any:
        if not is_extreme(img.width, img.height, self.max_aspect) or self._kind == "bounded":
            return self.transform(img)
        if self._kind == "crop":
            return self.transform(_central(img, self.max_aspect))
        pre, r, c, resample, post = self._steps
        for step in pre:
            img = step(img)
        img = resize_centre_crop(img, r, c, resample)
        for step in post:
            img = step(img)
        return img

    def __repr__(self) -> str:
        return f"BoundedTransform({self.transform!r}, max_aspect={self.max_aspect})"


def bounded(transform: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``transform`` wrapped in :class:`BoundedTransform` (once)."""
    return transform if isinstance(transform, BoundedTransform) else BoundedTransform(transform)
