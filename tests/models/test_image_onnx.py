"""Torch-free image queries: indexing exports the image tower to ONNX (checked against
torch), a query image is preprocessed with Pillow and numpy and embedded with onnxruntime,
and a missing or damaged export falls back to torch (issue 15: `search --image` took
7.5-20 s cold)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, draw_image, make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.onnx import image_tower, text_tower

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _onnx_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(image_tower.ENV_SWITCH, "1")


@pytest.fixture
def tiny_coll(tmp_path: Path) -> Collection:
    root = tmp_path / "imgs"
    make_images(root, 12)
    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0), device="cpu")
    assert coll.last_report is not None and coll.last_report.notices == []
    return coll


def odd_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(48, 40), (31, 77), (300, 45), (32, 32), (17, 9), (250, 251)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes
    ]


def test_numpy_preprocessing_equals_torchvision(tiny_encoder) -> None:
    pp = tiny_encoder.tensor_preprocess()
    ours = image_tower.Preprocess(pp.size, pp.size, pp.mean, pp.std, pp.interpolation)
    transform = tiny_encoder.image_transform()
    for im in odd_images() + image_tower.check_images():
        want = transform(im).numpy()
        got = ours(im)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_numpy_preprocessing_equals_efficientnet_transform() -> None:
    pytest.importorskip("torchvision")
    from vlmsearch.models.unimodal import efficientnet_lite as eff
    from vlmsearch.models.unimodal.efficientnet_lite import EfficientNetLite0

    transform = EfficientNetLite0.image_transform(None)  # type: ignore[arg-type]
    ours = image_tower.Preprocess(eff.RESIZE, eff.IMAGE_SIZE, eff.MEAN, eff.STD, "bicubic")
    for im in odd_images():
        np.testing.assert_allclose(ours(im), transform(im).numpy(), atol=2e-5)


def test_index_exports_a_checked_image_tower(tiny_coll: Collection, tiny_encoder) -> None:
    spec = tiny_coll.manifest["encoder"]
    meta = json.loads((image_tower.export_dir(spec) / "meta.json").read_text())
    assert meta["spec"] == spec and meta["check"]["min_cosine"] >= image_tower.MIN_COSINE
    tower = image_tower.open_tower(spec)
    assert tower is not None
    images = odd_images()
    got = image_tower.l2_normalize(tower.features(images))
    want = tiny_encoder.encode_images(images)
    cos = np.sum(got * want, axis=1)
    assert cos.min() >= image_tower.MIN_COSINE


def _same_hits(a, b) -> None:
    assert [h.id for h in a] == [h.id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)


def test_image_search_equals_torch_and_never_builds_the_encoder(
    tiny_coll: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = draw_image(tmp_path / "q.png", (200, 30, 30), size=(61, 45), seed=3)
    light = Collection.open(tiny_coll.path, device="cpu")
    hits = light.search(image=str(query), k=8)
    assert light._encoder is None  # the torch encoder was never built
    mixed = light.search("a red square", image=str(query), negative="blue", k=8)
    monkeypatch.setenv(image_tower.ENV_SWITCH, "0")
    heavy = Collection.open(tiny_coll.path, device="cpu")
    _same_hits(hits, heavy.search(image=str(query), k=8))
    assert heavy._encoder is not None
    # texts and images together: torch-free only when both sides are exported; else torch
    _same_hits(mixed, heavy.search("a red square", image=str(query), negative="blue", k=8))


def test_text_and_image_query_uses_both_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(text_tower.ENV_SWITCH, "1")
    root = tmp_path / "imgs"
    make_images(root, 8)
    Collection.index(root, model=TINY, options=IngestOptions(workers=0), device="cpu")
    light = Collection.open(root / ".vlmsearch", device="cpu")
    hits = light.search("a green square", image=str(root / "img0001.png"), k=5)
    assert light._encoder is None
    monkeypatch.setenv(image_tower.ENV_SWITCH, "0")
    monkeypatch.setenv(text_tower.ENV_SWITCH, "0")
    heavy = Collection.open(root / ".vlmsearch", device="cpu")
    _same_hits(hits, heavy.search("a green square", image=str(root / "img0001.png"), k=5))


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_missing_or_damaged_export_falls_back_to_torch(
    tiny_coll: Collection, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = str(tiny_coll.root / "img0002.png")
    want = Collection.open(tiny_coll.path, device="cpu").search(image=query, k=5)
    folder = image_tower.export_dir(tiny_coll.manifest["encoder"])
    model = folder / "model.onnx"
    if damage == "missing":
        model.unlink()
    elif damage == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    else:  # same size, wrong bytes: only opening it tells
        model.write_bytes(b"\0" * model.stat().st_size)
    coll = Collection.open(tiny_coll.path, device="cpu")
    _same_hits(coll.search(image=query, k=5), want)
    assert coll._encoder is not None  # torch did the work
    if damage == "garbage":
        assert any("image queries use torch" in n for n in coll.notices)
    # the next index run puts a good export back
    Collection.index(tiny_coll.root, options=IngestOptions(workers=0), device="cpu")
    assert image_tower.open_tower(tiny_coll.manifest["encoder"]) is not None


CHILD = """
import json, sys
from vlmsearch import Collection
hits = Collection.open(sys.argv[1], device="cpu").search(image=sys.argv[2], k=3)
heavy = sorted(m for m in ("torch", "open_clip") if m in sys.modules)
print(json.dumps([[h.id for h in hits], heavy]))
"""


def test_image_query_imports_no_torch(tiny_coll: Collection) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    query = str(tiny_coll.root / "img0004.png")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_coll.path), query],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    ids, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert ids == [h.id for h in tiny_coll.search(image=query, k=3)]


def test_asif_offline_default_image_queries_equal_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmsearch.models.asif.encoder import offline_extra_available

    if not offline_extra_available():
        pytest.skip("needs the offline extra (EfficientNet-Lite0 + MiniLM)")
    root = tmp_path / "imgs"
    make_images(root, 6)
    Collection.index(root, encoder_kind="asif", options=IngestOptions(workers=0), device="cpu")
    spec = Collection.open(root / ".vlmsearch").manifest["encoder"]
    assert image_tower.export_ready(spec["image_encoder"])
    query = draw_image(tmp_path / "q.png", (30, 200, 30), size=(90, 60), seed=5)
    light = Collection.open(root / ".vlmsearch", device="cpu")
    hits = light.search(image=str(query), k=6)
    assert light._encoder is None
    want = light.encoder.encode_images([Image.open(query).convert("RGB")])
    got = light._image_queries.encode_images([Image.open(query).convert("RGB")])
    np.testing.assert_allclose(got, want, atol=1e-4)  # sparse relative vectors
    monkeypatch.setenv(image_tower.ENV_SWITCH, "0")
    heavy = Collection.open(root / ".vlmsearch", device="cpu")
    _same_hits(hits, heavy.search(image=str(query), k=6))


def test_numpy_preprocessing_bounds_extreme_aspect_ratios(tiny_encoder) -> None:
    """A 1 x 4000 strip is not resized whole (issue 21: the index workers preprocess with
    numpy): only the kept square is resampled, as the torch transform's bounded wrapper."""
    from vlmsearch.imaging.bounded_resize import bounded

    pp = tiny_encoder.tensor_preprocess()
    ours = image_tower.Preprocess(pp.size, pp.size, pp.mean, pp.std, pp.interpolation)
    transform = bounded(tiny_encoder.image_transform())
    rng = np.random.default_rng(3)
    for w, h in ((4000, 3), (2, 900), (1000, 40)):
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        np.testing.assert_allclose(ours(im), transform(im).numpy(), atol=2e-5)
