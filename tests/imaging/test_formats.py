"""More formats (issue 19): HEIC/AVIF and camera RAW through the ``formats`` extra, error
rows that name the extra without it, the RAW preview-or-demosaic rule and orientation."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY
from tests.imaging.dng import make_dng
from vlmsearch import Collection
from vlmsearch.imaging import formats
from vlmsearch.imaging.decode import (
    DecodeTask,
    ImageDecodeError,
    decode_image,
    decode_image_meta,
)
from vlmsearch.imaging.formats import raw
from vlmsearch.imaging.scan import (
    DEFAULT_EXTENSIONS,
    LEGACY_DEFAULT_EXTENSIONS,
    saved_extensions,
    scan,
)
from vlmsearch.ingest.options import IngestOptions

HINT = "pip install 'vlmsearch[formats]'"
TAKEN = "2021:05:06 07:08:09"


def scene(size=(64, 48)) -> Image.Image:
    """Quadrants of four colours, so that orientation and identity both show."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (220, 30, 30)
    arr[: h // 2, w // 2 :] = (30, 200, 30)
    arr[h // 2 :, : w // 2] = (30, 30, 220)
    arr[h // 2 :, w // 2 :] = (240, 240, 40)
    return Image.fromarray(arr)


def heic_bytes(orientation: int = 1) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    e = Image.Exif()
    e[0x0112] = orientation
    e.get_ifd(0x8769)[0x9003] = TAKEN
    buf = io.BytesIO()
    pillow_heif.from_pillow(scene()).save(buf, quality=90, exif=e.tobytes())
    return buf.getvalue()


def jpeg_bytes(size=(64, 48), colour=(10, 120, 250)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _index(root: Path) -> Collection:
    return Collection.index(root, model=TINY, options=IngestOptions(workers=0), device="cpu")


def _rows(coll: Collection) -> dict[str, dict]:
    return {r["path"]: r for r in coll.table.to_pylist()}


def test_scan_includes_plugin_extensions(tmp_path):
    for name in ("a.HEIC", "b.avif", "c.dng", "d.NEF", "e.cr3", "f.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert {".heic", ".avif", ".dng", ".cr3", ".nef", ".iiq"} <= set(DEFAULT_EXTENSIONS)
    assert [f.path for f in scan(tmp_path)] == ["a.HEIC", "b.avif", "c.dng", "d.NEF", "e.cr3"]


def test_routing_by_name_then_bytes():
    heif_head = b"\0\0\0\x1cftypheic" + b"\0" * 16
    assert formats.plugin_for(b"", "x.HEIC").name == "HEIC/HEIF"
    assert formats.plugin_for(heif_head, "photo.jpg").name == "HEIC/HEIF"  # misnamed
    assert formats.plugin_for(b"\0\0\0\x1cftypavif", None).name == "AVIF"
    assert formats.plugin_for(b"II*\0", "x.nef").name == "Camera RAW"
    assert formats.plugin_for(b"II*\0", "x.tif") is None  # a TIFF is Pillow's
    assert formats.plugin_for(jpeg_bytes(), "x.jpg") is None


def test_heic_decodes_with_exif_and_orientation():
    data = heic_bytes(orientation=6)
    img, fmt, size, meta = decode_image_meta(data, name="p.heic")
    assert fmt == "HEIF" and img.mode == "RGB"
    assert size == img.size == (48, 64)  # turned once, upright
    assert img.getpixel((47, 0))[0] > 180  # red, top-left before the turn, is top-right now
    assert meta["orientation"] == 6 and meta["taken_at"] == dt.datetime(2021, 5, 6, 7, 8, 9)
    assert formats.exif_of(data, "p.heic") == meta  # the GPU path's EXIF, without decoding


def test_heic_and_avif_round_trip_through_the_index(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "phone.heic").write_bytes(heic_bytes(orientation=6))
    (root / "camera.jpg").write_bytes(jpeg_bytes())
    avif = None
    if formats.plugin_for(b"", "x.avif") and _pillow_avif():
        avif = io.BytesIO()
        scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(avif, "AVIF")
        (root / "web.avif").write_bytes(avif.getvalue())
    coll = _index(root)
    rows = _rows(coll)
    heic = rows["phone.heic"]
    assert heic["error"] is None and heic["format"] == "HEIF"
    assert (heic["width"], heic["height"]) == (48, 64)
    assert heic["taken_at"] == dt.datetime(2021, 5, 6, 7, 8, 9) and heic["orientation"] == 6
    hits = coll.search(image=str(root / "phone.heic"), k=len(rows))
    assert len(hits) == len(rows)  # every row has its vector
    assert hits[0].path.endswith("phone.heic") and hits[0].score > 0.99
    if avif is not None:
        assert rows["web.avif"]["error"] is None and rows["web.avif"]["format"] == "AVIF"
        assert (rows["web.avif"]["width"], rows["web.avif"]["height"]) == (64, 48)
        hits = coll.search(image=str(root / "web.avif"), k=len(rows))
        assert hits[0].path.endswith("web.avif")


def _pillow_avif() -> bool:
    from PIL import features

    return bool(features.check("avif"))


def test_missing_extra_is_an_error_row_naming_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vlmsearch.cli.app import app

    root = tmp_path / "photos"
    root.mkdir()
    (root / "phone.heic").write_bytes(b"\0\0\0\x1cftypheic" + b"\0" * 200)
    (root / "camera.dng").write_bytes(make_dng())
    (root / "ok.jpg").write_bytes(jpeg_bytes())
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails
    monkeypatch.setitem(sys.modules, "rawpy", None)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    res = CliRunner().invoke(app, ["index", str(root), "--model", TINY, "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["encoded"] == 1 and rep["errors"] == 2
    samples = {s["path"]: s["error"] for s in rep["error_samples"]}
    assert set(samples) == {"phone.heic", "camera.dng"}
    assert all(HINT in e for e in samples.values()), samples
    rows = _rows(Collection.open(root / ".vlmsearch"))
    assert "HEIC/HEIF" in rows["phone.heic"]["error"] and HINT in rows["phone.heic"]["error"]
    assert "RAW" in rows["camera.dng"]["error"] and rows["ok.jpg"]["error"] is None


def test_missing_extra_on_decode(monkeypatch):
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(ImageDecodeError, match=r"vlmsearch\[formats\]"):
        decode_image(make_dng(), name="x.dng")


def test_gpu_pipeline_falls_back_to_pillow_for_heic(tmp_path, tiny_encoder):
    from vlmsearch.imaging.gpu_decode import TensorImagePipeline

    path = tmp_path / "p.heic"
    path.write_bytes(heic_bytes(orientation=6))
    pipe = TensorImagePipeline(
        [DecodeTask(0, str(path))], tiny_encoder.tensor_preprocess(), 4, "cpu"
    )
    ((records, pixels),) = list(pipe)
    rec = records[0]
    assert rec.error is None and rec.format == "HEIF" and (rec.width, rec.height) == (48, 64)
    assert rec.exif["orientation"] == 6 and pixels.shape[0] == 1
    assert pipe.stats["pillow"] == 1


# --- camera RAW: a real DNG through libraw ---------------------------------------------


def test_real_dng_demosaiced_and_turned():
    pytest.importorskip("rawpy")
    img, fmt, size, meta = decode_image_meta(make_dng(64, 48, orientation=6), name="x.DNG")
    assert fmt == "RAW" and img.mode == "RGB"
    assert img.size == (24, 32)  # demosaiced at half size, portrait (libraw turned it)
    assert size == (48, 64)  # the row's size: the full image's
    assert meta == {"camera_make": "Vlmsearch", "camera_model": "Test DNG", "orientation": 6}


def test_real_dng_large_preview_used_small_one_not():
    pytest.importorskip("rawpy")
    big = jpeg_bytes((1200, 800), (0, 0, 255))
    img, _, size, _ = decode_image_meta(make_dng(orientation=6, preview=big), name="x.dng")
    assert img.size == (800, 1200) and size == (48, 64)  # the preview, turned
    assert img.getpixel((400, 600))[2] > 200  # blue: the preview's pixels
    small = jpeg_bytes((300, 200), (0, 0, 255))
    img, _, size, _ = decode_image_meta(make_dng(orientation=6, preview=small), name="x.dng")
    assert img.size == (24, 32)  # too small: demosaiced instead


def test_damaged_raw_is_an_error():
    pytest.importorskip("rawpy")
    with pytest.raises(ImageDecodeError, match="cannot decode RAW"):
        decode_image(b"not a raw file at all" * 10, name="x.cr2")


# --- camera RAW: the preview-or-demosaic rule with a fake rawpy -------------------------


class _FakeRaw:
    def __init__(self, thumb, flip: int, calls: list):
        self.thumb, self.calls = thumb, calls
        self.sizes = types.SimpleNamespace(
            raw_width=80, raw_height=60, width=80, height=60, flip=flip
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def extract_thumb(self):
        if self.thumb is None:
            raise self.module.LibRawNoThumbnailError("No thumbnail in file")
        return self.thumb

    def postprocess(self, **kw):
        self.calls.append(kw)
        return np.full((30, 40, 3), 128, np.uint8)


def _fake_rawpy(monkeypatch, thumb, flip=0) -> list:
    calls: list = []
    mod = types.ModuleType("rawpy")
    mod.ThumbFormat = types.SimpleNamespace(JPEG="jpeg", BITMAP="bitmap")
    mod.LibRawError = type("LibRawError", (Exception,), {})
    mod.LibRawNoThumbnailError = type("LibRawNoThumbnailError", (mod.LibRawError,), {})

    def imread(fp):
        r = _FakeRaw(thumb, flip, calls)
        r.module = mod
        return r

    mod.imread = imread
    monkeypatch.setitem(sys.modules, "rawpy", mod)
    return calls


def _marked(size) -> Image.Image:
    """Grey with a red top-left corner block."""
    arr = np.full((size[1], size[0], 3), 100, np.uint8)
    arr[:8, :8] = (255, 0, 0)
    return Image.fromarray(arr)


def _jpeg_thumb(size):
    buf = io.BytesIO()
    _marked(size).save(buf, "JPEG", quality=95)
    return types.SimpleNamespace(format="jpeg", data=buf.getvalue())


@pytest.mark.parametrize(
    ("flip", "size", "corner"),
    [(0, (1200, 800), (0, 0)), (3, (1200, 800), (1199, 799)), (6, (800, 1200), (799, 0)),
     (5, (800, 1200), (0, 1199))],
)  # fmt: skip
def test_fake_preview_used_and_turned(monkeypatch, flip, size, corner):
    calls = _fake_rawpy(monkeypatch, _jpeg_thumb((1200, 800)), flip)
    img, fmt, got, meta = decode_image_meta(b"RAW", name="x.nef")  # 80x60 sensor
    assert calls == [] and fmt == "RAW"  # no demosaicing
    assert img.size == size and got == ((60, 80) if flip & 4 else (80, 60))
    assert img.getpixel(corner)[0] > 200 and img.getpixel(corner)[1] < 60  # red moved there
    assert meta["orientation"] == raw.FLIP_TO_ORIENTATION[flip]


def test_fake_bitmap_preview(monkeypatch):
    bitmap = np.asarray(_marked((1024, 700)))
    _fake_rawpy(monkeypatch, types.SimpleNamespace(format="bitmap", data=bitmap))
    img, _, size, _ = decode_image_meta(b"RAW", name="x.arw")
    assert img.size == (1024, 700) and img.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("thumb", [None, "small"])
def test_fake_small_or_no_preview_demosaics(monkeypatch, thumb):
    t = _jpeg_thumb((raw.PREVIEW_MIN_SIDE - 1, 600)) if thumb else None
    calls = _fake_rawpy(monkeypatch, t, flip=6)
    img, _, size, _ = decode_image_meta(b"RAW", name="x.cr3")
    assert img.size == (40, 30) and size == (60, 80)  # postprocess's, not turned again
    assert calls == [{"use_camera_wb": True, "half_size": True, "output_bps": 8}]


def test_fake_raw_over_pixel_limit(monkeypatch):
    _fake_rawpy(monkeypatch, _jpeg_thumb((1200, 800)))
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        decode_image(b"RAW", max_pixels=80 * 60 - 1, name="x.raf")


def test_collection_with_the_old_defaults_scans_the_new_formats(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg_bytes())
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    _index(root)
    manifest = root / ".vlmsearch" / "manifest.json"
    saved = json.loads(manifest.read_text())
    saved["scan"]["extensions"] = list(LEGACY_DEFAULT_EXTENSIONS)  # made before the plugins
    manifest.write_text(json.dumps(saved))
    (root / "b.dng").write_bytes(make_dng())
    assert set(_rows(_index(root))) == {"a.jpg", "b.dng"}  # an error row without rawpy
    assert saved_extensions([".jpg", ".png"]) == (".jpg", ".png")  # a chosen list stays


def test_fake_large_preview_decoded_at_a_reduced_dct_scale(monkeypatch):
    _fake_rawpy(monkeypatch, _jpeg_thumb((4400, 2400)))
    img, _, size, _ = decode_image_meta(b"RAW", name="x.orf")
    assert img.size == (2200, 1200)  # 1/2: the smallest scale keeping both sides >= 1024
    assert size == (80, 60)


def test_exif_backfill_reads_plugin_formats_whole(tmp_path):
    data = heic_bytes(orientation=6)
    want = {"orientation": 6, "taken_at": dt.datetime(2021, 5, 6, 7, 8, 9)}
    for name in ("p.heic", "misnamed.jpg"):  # by extension, and by its bytes
        (tmp_path / name).write_bytes(data)
        assert formats.file_exif(str(tmp_path / name)) == want
    (tmp_path / "c.dng").write_bytes(make_dng(orientation=3))
    got = formats.file_exif(str(tmp_path / "c.dng"))
    assert got["orientation"] == 3 and got["camera_make"] == "Vlmsearch"
