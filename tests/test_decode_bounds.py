"""Decoding correctness and bounds (issue 14 items 6, 7, 15, 17).

16-bit and float images are scaled by their mode's range; the pixel limit is exactly the
documented ``max_pixels``; extreme aspect ratios are resized with bounded memory to the
same pixels; query and indexed files are read only when they are regular files of a
bounded size.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlmsearch.indexes.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _grey_scene() -> np.ndarray:
    """An 8-bit greyscale picture with dark, mid and bright areas."""
    im = Image.new("L", (64, 48), 30)
    d = ImageDraw.Draw(im)
    d.rectangle((10, 10, 40, 30), fill=200)
    d.ellipse((5, 5, 20, 20), fill=120)
    d.line((0, 47, 63, 0), fill=255, width=2)
    return np.asarray(im)


# -- item 6: high bit depth -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt", "convert"),
    [
        ("I;16", "PNG", lambda a: a.astype(np.uint16) * 257),
        ("I;16", "TIFF", lambda a: a.astype(np.uint16) * 257),
        ("I", "TIFF", lambda a: a.astype(np.int32) * 257),
        ("F", "TIFF", lambda a: a.astype(np.float32) / 255),
    ],
)
def test_high_bit_depth_image_decodes_like_its_8bit_version(mode, fmt, convert):
    scene = _grey_scene()
    data = _encode(Image.fromarray(convert(scene)), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the case under test
    rgb = np.asarray(decode_image(data)[0]).astype(int)
    assert rgb.shape == (*scene.shape, 3)
    assert np.abs(rgb - scene[..., None]).max() <= 1
    assert 20 < rgb.mean() < 235  # neither all white nor all black


def test_float_image_outside_unit_range_is_stretched():
    ramp = np.linspace(-3.0, 5.0, 64 * 8, dtype=np.float32).reshape(8, 64)
    ramp[0, 0] = np.nan
    rgb = np.asarray(decode_image(_encode(Image.fromarray(ramp), "TIFF"))[0])[..., 0]
    assert rgb.min() == 0 and rgb.max() == 255
    assert np.all(np.diff(rgb[1].astype(int)) >= 0)  # order kept


def test_16bit_transparency_is_composited_on_white():
    arr = np.full((8, 8), 0, np.uint16)
    arr[:4] = 1000
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    rgb = np.asarray(decode_image(buf.getvalue())[0])
    assert (rgb[4:] == 255).all()  # transparent rows
    assert (rgb[:4] == round(1000 * 255 / 65535)).all()


# -- item 7: the documented pixel limit, not Pillow's ---------------------------------------


def test_pixel_limit_is_the_callers_not_pillows(monkeypatch):
    # Pillow refuses at twice its own global; a stricter global must not override ours.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    small = _encode(Image.new("RGB", (100, 50), (10, 20, 30)), "PNG")
    img, _ = decode_image(small, max_pixels=10_000)
    assert img.size == (100, 50)
    big = _encode(Image.new("RGB", (200, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match="over the 10000-pixel limit"):
        decode_image(big, max_pixels=10_000)


def test_photo_between_89_and_179_megapixels_decodes():
    data = _encode(Image.new("1", (12000, 8000), 1), "PNG")  # 96 Mpx, ~12 KB
    img, fmt = decode_image(data)
    assert (img.size, fmt) == ((12000, 8000), "PNG")
    over = _encode(Image.new("1", (13400, 13400)), "PNG")  # 179.6 Mpx
    with pytest.raises(ImageDecodeError, match=f"{DEFAULT_MAX_PIXELS}-pixel limit"):
        decode_image(over)
