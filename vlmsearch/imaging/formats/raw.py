"""Camera RAW files (LibRaw through ``rawpy``).

A RAW file usually embeds a JPEG preview the camera made from the same exposure. When the
preview's long side is at least :data:`PREVIEW_MIN_SIDE` it is used as the image: it is
the camera's own rendering of the shot (its tone curve and colours, what the photographer
saw), and the encoders only ever see a few hundred pixels. It is decoded at the smallest
JPEG DCT scale (1/2, 1/4, 1/8) that keeps both sides at least :data:`PREVIEW_MIN_SIDE`.
Otherwise the sensor data is demosaiced at half size with the camera's white balance
(``postprocess(use_camera_wb=True, half_size=True)``). The row's width and height are the
full image's (LibRaw's ``sizes``), whichever was decoded; see
benchmarks/bench_formats.py for the cost of each path.

Orientation: LibRaw's ``postprocess`` already turns its output by the file's orientation
(``sizes.flip``), but the embedded preview is stored as the sensor saw it, so the same
``flip`` is applied to the preview here. The ``orientation`` column is the TIFF/EXIF tag
where the file has one (TIFF-based RAWs: DNG, NEF, CR2, ARW...), else the one ``flip``
stands for.
"""

from __future__ import annotations

import io
from typing import Any

from vlmsearch.errors import reason
from vlmsearch.imaging.format_extensions import RAW_EXTENSIONS
from vlmsearch.imaging.formats import FormatError, FormatPlugin, Opened, missing_extra

PREVIEW_MIN_SIDE = 1024
"""The smallest long side of an embedded preview used instead of demosaicing. Encoders
resize the short side to their input size (224 for the default CLIP and EfficientNet
models, 336 to 512 for the large CLIP and SigLIP ones) and crop the centre: a 3:2 preview
1024 pixels long has a 683-pixel short side, above every input size, and is also a sharp
full-screen view in the browser. Cameras' small previews (160x120, 640x424) fall below it
and are demosaiced instead."""

# LibRaw's ``flip`` (dcraw's): bit 2 swaps the axes, bit 1 reverses rows, bit 0 columns;
# the EXIF orientation each stands for (0 upright, 3 turned 180, 5 ccw, 6 cw).
FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def _rawpy() -> Any:
    try:
        import rawpy
    except ImportError:
        raise missing_extra("Camera RAW") from None
    return rawpy


def _errors(rawpy: Any) -> tuple[type[BaseException], ...]:
    return (getattr(rawpy, "LibRawError", RuntimeError), OSError, ValueError, RuntimeError)


def open_raw(data: bytes, max_pixels: int) -> Opened:
    rawpy = _rawpy()
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except _errors(rawpy) as e:
        raise FormatError(f"cannot decode RAW: {reason(e)}") from None
    with raw:
        sizes = raw.sizes
        pixels = sizes.raw_width * sizes.raw_height
        if max_pixels and pixels > max_pixels:
            raise FormatError(
                f"RAW sensor is {sizes.raw_width}x{sizes.raw_height} = {pixels} pixels, "
                f"over the {max_pixels}-pixel limit (decompression-bomb guard)"
            )
        img = preview(raw, rawpy)
        if img is None:
            img = develop(raw, rawpy)
        flip = sizes.flip
        full = (sizes.height, sizes.width) if flip & 4 else (sizes.width, sizes.height)
    return Opened(img, "RAW", columns(data, flip), oriented=True, size=full)


def preview(raw: Any, rawpy: Any) -> Any:
    """The embedded preview, upright, as a fresh RGB image (no EXIF of its own, so nothing
    turns it again); None when there is none or it is too small to use."""
    import numpy as np
    from PIL import Image

    try:
        thumb = raw.extract_thumb()
    except Exception:  # no preview, or one LibRaw cannot unpack: demosaic instead
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            img = Image.open(io.BytesIO(thumb.data))
            if max(img.size) < PREVIEW_MIN_SIDE:
                return None
            img.draft("RGB", (PREVIEW_MIN_SIDE, PREVIEW_MIN_SIDE))  # DCT scaling, see above
            img = img.convert("RGB")
        elif thumb.format == rawpy.ThumbFormat.BITMAP:
            img = Image.fromarray(np.asarray(thumb.data, dtype=np.uint8)).convert("RGB")
        else:
            return None
    except (OSError, ValueError, SyntaxError):
        return None
    if max(img.size) < PREVIEW_MIN_SIDE:
        return None
    return Image.fromarray(orient(np.asarray(img), raw.sizes.flip))


def orient(pixels: Any, flip: int) -> Any:
    """An (h, w, c) array turned upright by LibRaw's ``flip`` (dcraw's ``flip_index``:
    rows reversed for bit 1, columns for bit 0, then the axes swapped for bit 2)."""
    if flip & 2:
        pixels = pixels[::-1]
    if flip & 1:
        pixels = pixels[:, ::-1]
    if flip & 4:
        pixels = pixels.transpose(1, 0, 2)
    return pixels.copy()


def develop(raw: Any, rawpy: Any) -> Any:
    """Demosaic at half size (libraw turns the result upright itself)."""
    from PIL import Image

    try:
        rgb = raw.postprocess(use_camera_wb=True, half_size=True, output_bps=8)
    except _errors(rawpy) as e:
        raise FormatError(f"cannot decode RAW: {reason(e)}") from None
    return Image.fromarray(rgb).convert("RGB")


def columns(data: bytes, flip: int | None) -> dict[str, Any]:
    """The EXIF columns of a RAW file: from its TIFF structure where it has one (read by
    Pillow's EXIF parser, which does not need to decode the image), the orientation from
    ``flip`` where the file's tags do not give one."""
    from vlmsearch.imaging import exif

    meta: dict[str, Any] = {}
    if data[:4] in (b"II*\0", b"MM\0*"):
        from PIL import Image

        parsed = Image.Exif()
        try:
            parsed.load(bytes(data))
        except Exception:  # damaged tags are no tags
            parsed = None
        if parsed is not None:
            meta = exif.from_exif(parsed)
    if "orientation" not in meta and flip in FLIP_TO_ORIENTATION:
        meta["orientation"] = FLIP_TO_ORIENTATION[flip]
    return meta


def raw_exif(data: bytes) -> dict[str, Any]:
    """:func:`columns` without decoding; ``flip`` only where rawpy is installed."""
    flip = None
    try:
        rawpy = _rawpy()
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip = raw.sizes.flip
    except Exception:  # noqa: S110 - the tags alone still count
        pass
    return columns(data, flip)


RAW = FormatPlugin(
    name="Camera RAW",
    extensions=RAW_EXTENSIONS,
    extra="formats",
    sniff=lambda head: False,  # many RAWs are TIFFs: recognised by extension only
    open=open_raw,
    read_exif=raw_exif,
)
