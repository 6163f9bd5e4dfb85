"""Opt-in JPEG draft decoding: what it decodes, what it records, how far embeddings move."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tests.conftest import TINY
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.imaging.decode import decode_image, decode_image_sized
from vlmsearch.ingest.options import IngestOptions


def photo_like(path, size=(1200, 900), seed=0, orientation=None):
    """A smooth JPEG with some structure (gradients, shapes, mild blur), like a photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(xx / (40 + 20 * rng.random()) + rng.random() * 6),
            128 + 100 * np.cos(yy / (30 + 20 * rng.random())),
            128 + 60 * np.sin((xx + yy) / 70.0),
        ],
        axis=-1,
    )
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = int(rng.integers(0, w - 100)), int(rng.integers(0, h - 100))
        r = int(rng.integers(20, 150))
        d.ellipse((x, y, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    im = im.filter(ImageFilter.GaussianBlur(1.5))
    kw = {"quality": 90}
    if orientation is not None:
        exif = im.getexif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def test_draft_decodes_smaller_but_reports_full_size(tmp_path):
    data = photo_like(tmp_path / "big.jpg").read_bytes()
    full, fmt, size = decode_image_sized(data)
    small, _, size2 = decode_image_sized(data, draft=(224, 224))
    assert full.size == size == size2 == (1200, 900) and fmt == "JPEG"
    assert small.size == (300, 225)  # 1/4 scale keeps both sides >= 224
    assert small.mode == "RGB"
    # never below the requested size, and no-ops for images already small
    tiny, _, _ = decode_image_sized(data, draft=(800, 800))
    assert tiny.size == (1200, 900)


def test_draft_with_exif_rotation_reports_displayed_size(tmp_path):
    data = photo_like(tmp_path / "rot.jpg", orientation=6).read_bytes()
    img, _, size = decode_image_sized(data, draft=(224, 224))
    assert size == (900, 1200) and img.size == (225, 300)
    assert decode_image(data)[0].size == (900, 1200)


def test_draft_ignores_other_formats(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (1000, 800), (10, 20, 30)).save(path)
    img, fmt, size = decode_image_sized(path.read_bytes(), draft=(32, 32))
    assert fmt == "PNG" and img.size == size == (1000, 800)


@pytest.fixture
def big_jpegs(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        photo_like(root / f"p{i}.jpg", size=(640 + 40 * i, 480 + 20 * i), seed=i)
    Image.new("RGB", (50, 40), (200, 30, 30)).save(root / "small.png")
    return root


def _index(root, collection, **kw):
    opts = IngestOptions(batch_size=4, workers=0, **kw)
    return Collection.index(root, collection, model=TINY, options=opts, device="cpu")


def test_fast_decode_is_recorded_and_kept(big_jpegs, tmp_path):
    fast = _index(big_jpegs, tmp_path / "fast", fast_decode=True)
    dec = fast.manifest["preprocessing"]["decode"]
    assert dec["jpeg_draft"] is True and dec["decoders_used"] == ["pillow-draft"]
    t = fast.table
    widths = dict(zip(t["path"].to_pylist(), t["width"].to_pylist(), strict=True))
    assert widths["p0.jpg"] == 640 and widths["p5.jpg"] == 840  # full sizes, not drafted
    # an update run without the flag keeps the collection's setting ...
    (big_jpegs / "p0.jpg").unlink()
    again = _index(big_jpegs, tmp_path / "fast")
    assert again.manifest["preprocessing"]["decode"]["jpeg_draft"] is True
    # ... and the opposite explicit choice is refused, or taken with --rebuild
    with pytest.raises(CollectionError, match="--fast-decode"):
        _index(big_jpegs, tmp_path / "fast", fast_decode=False)
    rebuilt = _index(big_jpegs, tmp_path / "fast", fast_decode=False, rebuild=True)
    assert rebuilt.manifest["preprocessing"]["decode"]["jpeg_draft"] is False


def test_exact_collection_refuses_fast_decode_update(big_jpegs, tmp_path):
    exact = _index(big_jpegs, tmp_path / "exact")
    dec = exact.manifest["preprocessing"]["decode"]
    assert dec["jpeg_draft"] is False and dec["decoders_used"] == ["pillow"]
    with pytest.raises(CollectionError, match="without --fast-decode"):
        _index(big_jpegs, tmp_path / "exact", fast_decode=True)


def test_fast_decode_drift_is_bounded(big_jpegs, tmp_path):
    exact = _index(big_jpegs, tmp_path / "exact")
    fast = _index(big_jpegs, tmp_path / "fast", fast_decode=True)
    ids = np.sort(exact.vectors.ids)
    assert np.array_equal(ids, np.sort(fast.vectors.ids))
    a = exact.vectors.get(ids).astype(np.float32)
    b = fast.vectors.get(ids).astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # The tiny test model sees 32x32 inputs drafted from 1/8-scale decodes, the worst
    # case (measured 0.9996 at worst); for ViT-B-32 at 224 px see benchmarks/RESULTS.md.
    assert cos.min() > 0.995
    assert cos.max() > 0.9999  # the PNG is decoded the same either way
