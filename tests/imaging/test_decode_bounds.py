"""Decoding correctness and bounds (issue 14 items 6, 7, 15, 17).

16-bit and float images are scaled by their mode's range; the pixel limit is exactly the
documented ``max_pixels``; extreme aspect ratios are resized with bounded memory to the
same pixels; query and indexed files are read only when they are regular files of a
bounded size.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlmsearch.imaging.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image


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


# -- item 17: only regular files of a bounded size are read -----------------------------------


def _in_thread(fn, timeout: float = 30.0):
    """fn()'s result or exception; a call still blocked after ``timeout`` fails the test
    (a FIFO open used to hang forever)."""
    import threading

    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # reported to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked reading the file"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


@pytest.fixture
def fifo(tmp_path):
    import os

    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    yield path
    # a reader still blocked in open() (the old behaviour) is released by a writer
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


@pytest.fixture
def sparse(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(3 * 1024**3)  # 3 GB, sparse: no disk used
    return path


def test_load_image_refuses_devices_fifos_and_huge_files(fifo, sparse):
    from vlmsearch.imaging.decode import load_image

    cases = [
        ("/dev/zero", "not a regular file (a character device)"),
        (str(fifo), "not a regular file (a FIFO)"),
        (str(sparse), "over the 1073741824-byte limit"),
    ]
    for path, needle in cases:
        with pytest.raises(ImageDecodeError, match=r"cannot read .*") as info:
            _in_thread(lambda p=path: load_image(p))
        assert needle in str(info.value), path


def test_read_image_file_bounds_the_read(tmp_path):
    from vlmsearch.imaging.file_read import read_image_file

    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 1000)
    assert read_image_file(path, max_bytes=1000) == b"x" * 1000
    with pytest.raises(OSError, match="over the 999-byte limit"):
        read_image_file(path, max_bytes=999)
    with pytest.raises(OSError, match="a directory"):
        read_image_file(tmp_path)


def test_indexing_reader_gives_error_records_for_special_files(fifo, sparse):
    from vlmsearch.imaging.decode import DecodeTask, ImageFileDataset

    tasks = [DecodeTask(0, "/dev/zero"), DecodeTask(1, str(fifo)), DecodeTask(2, str(sparse))]
    ds = ImageFileDataset(tasks, transform=lambda im: im)
    records = [_in_thread(lambda i=i: ds[i]) for i in range(3)]
    assert [r.pixels for r in records] == [None, None, None]
    assert "character device" in (records[0].error or "")
    assert "FIFO" in (records[1].error or "")
    assert "byte limit" in (records[2].error or "")


def test_cli_query_image_special_files_are_one_line_errors(image_dir, fifo, sparse):
    from typer.testing import CliRunner

    from tests.conftest import TINY
    from vlmsearch.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["index", str(image_dir), "--model", TINY, "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    coll = str(image_dir / ".vlmsearch")
    cases = [("/dev/zero", "character device"), (str(fifo), "FIFO"), (str(sparse), "byte limit")]
    for path, needle in cases:
        res = _in_thread(lambda p=path: runner.invoke(app, ["search", "--image", p, "-c", coll]))
        assert res.exit_code == 1, res.output
        assert needle in res.output and "error:" in res.output
        assert "Traceback" not in res.output
    # classify PATHS: one error row per file, the others go on
    args = ["classify", *(p for p, _ in cases), "--labels", "a,b", "--model", TINY, "--json"]
    res = _in_thread(lambda: runner.invoke(app, args))
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    errors = {row["path"]: row["error"] for row in json.loads(res.stdout)}
    for path, needle in cases:
        assert needle in errors[path], errors


# -- item 15: memory bounded by the output size, whatever the aspect ratio --------------------


def _strip(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(1, 20000), (20000, 1), (3, 7001), (300, 5000), (37, 1000)])
def test_bounded_transform_gives_the_full_resize_pixels(tiny_encoder, shape):
    import torch

    from vlmsearch.imaging.bounded_resize import BoundedTransform, is_extreme

    transform = tiny_encoder.image_transform()
    img = _strip(*shape)
    assert is_extreme(*img.size)  # the bounded path is taken
    ref, out = transform(img), BoundedTransform(transform)(img)
    assert ref.shape == out.shape
    # Same pixels, up to one 8-bit level where Pillow's float box offsets round differently.
    std = torch.tensor(transform.transforms[-1].std).view(3, 1, 1)
    levels = ((ref - out).abs() * std * 255).round()
    assert levels.max() <= 1 and (levels > 0).float().mean() < 0.01


def test_unknown_transform_gets_the_central_part():
    from vlmsearch.imaging.bounded_resize import MAX_ASPECT, BoundedTransform

    seen = []
    out = BoundedTransform(lambda im: seen.append(im.size) or "ok")(_strip(2, 100000))
    assert out == "ok" and seen == [(2, 2 * MAX_ASPECT)]


STRIP_CHILD = r"""
import io, json, os, resource, sys
import numpy as np
from PIL import Image
from vlmsearch.imaging.decode import DecodeTask, ImageFileDataset, load_image
from vlmsearch.models.encoders import load_encoder
from vlmsearch.search.query import build_terms, query_vector

path = sys.argv[1]
enc = load_encoder("vlms-tiny", device="cpu")
query_vector(enc, build_terms(texts=["warm up"]))
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"start": peak_mb()}
vec = query_vector(enc, build_terms(images=[path]))  # --image, uploads: encode_images
out["query"] = peak_mb()
out["finite"] = bool(np.isfinite(vec).all())
rec = ImageFileDataset([DecodeTask(0, path)], enc.image_transform())[0]  # indexing
out["index"] = peak_mb()
out["index_ok"] = rec.error is None and tuple(rec.pixels.shape) == (3, 32, 32)
from vlmsearch.imaging.gpu_decode import TensorImagePipeline  # the GPU path, run on the CPU
pipe = TensorImagePipeline([DecodeTask(0, path)], enc.tensor_preprocess(), 1, "cpu")
records, pixels = next(iter(pipe))
out["tensor"] = peak_mb()
out["tensor_ok"] = records[0].error is None and tuple(pixels.shape) == (1, 3, 32, 32)
out["same"] = float((pixels[0] - rec.pixels).abs().max())
print(json.dumps(out))
"""


def test_strip_query_and_indexing_memory_is_bounded(tmp_path):
    """A 1 x 200000 strip (a few hundred bytes as PNG) used to be resized to 32 x 6.4
    million pixels by the tiny model's transform (600 MB; 30 GB at 224 px)."""
    import os
    import subprocess
    import sys

    from tests.conftest import CONFIG_DIR

    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 200_000), (200, 40, 40)).save(path)
    assert path.stat().st_size < 4096
    env = {**os.environ, "VLMSEARCH_MODEL_CONFIGS": str(CONFIG_DIR)}
    res = subprocess.run(
        [sys.executable, "-c", STRIP_CHILD, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["finite"] and out["index_ok"] and out["tensor_ok"], out
    assert out["same"] < 1e-6, out  # the tensor pipeline gives the Pillow path's pixels
    # peak RSS: each step would raise it by over 1 GB without the bound
    for step in ("query", "index", "tensor"):
        assert out[step] - out["start"] < 150, (step, out)  # MB
