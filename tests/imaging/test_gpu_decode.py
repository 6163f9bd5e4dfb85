"""The tensor (nvJPEG) decoding path, exercised through its CPU fallback; the CUDA tests
skip cleanly where torch sees no GPU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.conftest import TINY
from tests.imaging.test_fast_decode import photo_like
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.imaging.decode import DecodeTask, content_hash, decode_image, iter_decoded
from vlmsearch.imaging.gpu_decode import TensorImagePipeline
from vlmsearch.imaging.jpeg_header import parse_jpeg_header
from vlmsearch.imaging.tensor_preprocess import TensorPreprocess, orient, resize_crop_normalise
from vlmsearch.ingest.options import IngestOptions

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _jpeg(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow(orientation):
    arr = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    with Image.open(io.BytesIO(_jpeg(im, exif=exif, quality=100))) as j:
        want = np.asarray(ImageOps.exif_transpose(j))
        stored = torch.from_numpy(np.asarray(j.convert("RGB")).copy()).permute(2, 0, 1)
    got = orient(stored, orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape and np.array_equal(got, want)


def test_header_parser_agrees_with_pillow():
    im = Image.new("RGB", (123, 45), (10, 200, 30))
    exif = im.getexif()
    exif[0x0112] = 6
    h = parse_jpeg_header(_jpeg(im, exif=exif))
    assert (h.width, h.height, h.components, h.orientation) == (123, 45, 3, 6)
    h = parse_jpeg_header(_jpeg(im, progressive=True))
    assert (h.width, h.height, h.orientation) == (123, 45, 1)
    assert parse_jpeg_header(_jpeg(im.convert("L"))).components == 1
    # big-endian EXIF, as cameras write it
    assert parse_jpeg_header(_jpeg(im, exif=_big_endian_exif(3))).orientation == 3
    assert parse_jpeg_header(_jpeg(Image.new("CMYK", (8, 8)))) is None  # 4 components
    png = io.BytesIO()
    im.save(png, "PNG")
    assert parse_jpeg_header(png.getvalue()) is None
    assert parse_jpeg_header(_jpeg(im)[:20]) is None  # truncated before the frame header
    assert parse_jpeg_header(b"") is None


def _big_endian_exif(orientation: int) -> bytes:
    ifd = b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01" + bytes([0, orientation, 0, 0])
    return b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + ifd + b"\x00\x00\x00\x00"


def test_preprocess_from_open_clip_cfg():
    cfg = {
        "size": [224, 224],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    pp = TensorPreprocess.from_open_clip(cfg)
    assert pp == TensorPreprocess(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")
    assert TensorPreprocess.from_open_clip({**cfg, "resize_mode": "squash"}) is None
    assert TensorPreprocess.from_open_clip({**cfg, "size": [224, 256]}) is None
    assert TensorPreprocess.from_open_clip({**cfg, "interpolation": "lanczos"}) is None


def test_resize_matches_reference_transform(tmp_path, tiny_encoder):
    data = photo_like(tmp_path / "p.jpg", size=(500, 375)).read_bytes()
    img = decode_image(data)[0]
    ref = tiny_encoder.image_transform()(img)
    u8 = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    got = resize_crop_normalise(u8, tiny_encoder.tensor_preprocess())
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 0.1  # about one 8-bit level after normalisation
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert cos > 0.9999


@pytest.fixture
def mixed_dir(tmp_path):
    root = tmp_path / "mixed"
    for i in range(5):
        photo_like(root / f"p{i}.jpg", size=(300 + 30 * i, 240), seed=i)
    photo_like(root / "rot.jpg", size=(320, 200), orientation=6)
    Image.new("L", (90, 70), 120).save(root / "grey.jpg")
    Image.new("CMYK", (64, 48), (0, 80, 0, 0)).save(root / "cmyk.jpg")
    Image.new("RGBA", (40, 50), (0, 0, 255, 128)).save(root / "alpha.png")
    (root / "broken.jpg").write_bytes(_jpeg(Image.new("RGB", (64, 64)))[:200])
    (root / "empty.jpg").write_bytes(b"")
    return root


def _tasks(root):
    return [DecodeTask(i, str(p)) for i, p in enumerate(sorted(root.iterdir()))]


def test_cpu_pipeline_matches_pillow_pipeline(mixed_dir, tiny_encoder):
    tasks = _tasks(mixed_dir)
    tasks[0].known_hash = content_hash(Path(tasks[0].path).read_bytes())  # unchanged
    pipe = TensorImagePipeline(tasks, tiny_encoder.tensor_preprocess(), 4, "cpu")
    got = list(pipe)
    want = list(iter_decoded(tasks, tiny_encoder.image_transform(), 4, 0))
    recs_g = [r for rs, _ in got for r in rs]
    recs_w = [r for rs, _ in want for r in rs]
    assert [r.index for r in recs_g] == list(range(len(tasks)))
    for g, w in zip(recs_g, recs_w, strict=True):
        assert (g.width, g.height, g.format, g.content_hash, g.unchanged) == (
            w.width,
            w.height,
            w.format,
            w.content_hash,
            w.unchanged,
        ), tasks[g.index].path
        assert (g.error is None) == (w.error is None), (g.error, w.error)
    px_g = torch.cat([p for _, p in got if p is not None])
    px_w = torch.cat([p for _, p in want if p is not None])
    assert px_g.shape == px_w.shape
    a, b = tiny_encoder.encode_pixels(px_g), tiny_encoder.encode_pixels(px_w)
    assert (a * b).sum(1).min() > 0.999
    assert pipe.stats["libjpeg"] == 7  # 6 colour JPEGs (one rotated) and the greyscale one
    assert pipe.stats["pillow"] == 1  # the CMYK JPEG (the PNG is unchanged, the rest broken)


def test_ingest_gpu_decode_needs_cuda(tmp_path, mixed_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the refusal only applies without one")
    opts = IngestOptions(batch_size=4, workers=0, gpu_decode=True)
    with pytest.raises(CollectionError, match="GPU decoding needs"):
        Collection.index(mixed_dir, tmp_path / "c", model=TINY, options=opts, device="cpu")


@cuda
def test_cuda_pipeline_close_to_reference(mixed_dir):
    from vlmsearch.models.encoders import load_encoder

    enc = load_encoder(TINY, device="cuda")
    tasks = _tasks(mixed_dir)
    pipe = TensorImagePipeline(tasks, enc.tensor_preprocess(), 4, "cuda")
    got = list(pipe)
    want = list(iter_decoded(tasks, enc.image_transform(), 4, 0))
    px_g = torch.cat([p for _, p in got if p is not None])
    px_w = torch.cat([p for _, p in want if p is not None]).cuda()
    assert px_g.device.type == "cuda" and px_g.shape == px_w.shape
    a, b = enc.encode_pixels(px_g), enc.encode_pixels(px_w)
    assert (a * b).sum(1).min() > 0.99
    assert pipe.stats["nvjpeg"] >= 5


@cuda
def test_cuda_ingest_uses_nvjpeg(tmp_path, mixed_dir):
    opts = IngestOptions(batch_size=4, workers=0)
    coll = Collection.index(mixed_dir, tmp_path / "c", model=TINY, options=opts, device="cuda")
    assert coll.manifest["preprocessing"]["decode"]["decoders_used"] == ["nvjpeg"]
    assert coll.last_report.errors == 2
