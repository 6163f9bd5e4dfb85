"""CPU indexing through the ONNX image tower (issue 21): an index run on the CPU encodes
with onnxruntime when the cached export's recorded timing says it is faster, with the
torch path's vectors, per-file error rows as before, no torch import for an existing
collection, and torch (same vectors, no traceback) when the export is damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.onnx import image_tower

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[2]
MIN_COSINE = 1 - 1e-4


@pytest.fixture(autouse=True)
def _onnx_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(image_tower.ENV_SWITCH, "1")


def _index(root: Path, coll: Path, **kw) -> Collection:
    opts = IngestOptions(workers=kw.pop("workers", 2))
    return Collection.index(root, coll, options=opts, device="cpu", **kw)


def _engine(c: Collection) -> str:
    return c.manifest["ingest"]["executor"]["engine"]


def _vectors(c: Collection) -> dict[str, np.ndarray]:
    vt = c.vectors
    rows = vt.get(vt.ids)
    dense = np.asarray(rows.toarray() if hasattr(rows, "toarray") else rows, np.float32)
    paths = dict(zip(c.table["id"].to_pylist(), c.table["path"].to_pylist(), strict=True))
    return {paths[i]: v for i, v in zip(vt.ids.tolist(), dense, strict=True)}


def _assert_same(a: Collection, b: Collection) -> None:
    va, vb = _vectors(a), _vectors(b)
    assert va.keys() == vb.keys() and va
    for path, v in va.items():
        w = vb[path]
        cos = float(v @ w / (np.linalg.norm(v) * np.linalg.norm(w)))
        assert cos >= MIN_COSINE, (path, cos)


def _rows(c: Collection) -> dict[str, tuple[str, str | None]]:
    return {r["path"]: (r["status"], r["error"]) for r in c.table.to_pylist()}


def _meta_path(c: Collection) -> Path:
    return image_tower.export_dir(c.manifest["encoder"]) / "meta.json"


def _choose(c: Collection, choice: str) -> None:
    """Set the export's recorded winner (on the tiny model either may win)."""
    path = _meta_path(c)
    meta = json.loads(path.read_text())
    meta["engine"]["choice"] = choice
    path.write_text(json.dumps(meta))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    make_images(root, 9, sizes=[(48, 40), (31, 77), (300, 45), (17, 9), (250, 251)])
    (root / "broken.png").write_bytes(b"not an image at all")
    return root


@pytest.fixture
def exported(tmp_path: Path) -> Collection:
    """A tiny collection whose indexing exported (and timed) the image tower."""
    root = tmp_path / "first"
    make_images(root, 3)
    return _index(root, tmp_path / "first-coll", model=TINY)


def test_engine_timing_recorded(exported: Collection) -> None:
    engine = json.loads(_meta_path(exported).read_text())["engine"]
    rates = engine["images_per_s"]
    assert rates["torch"] > 0 and rates["onnxruntime"] > 0
    assert engine["choice"] == max(rates, key=rates.get)
    assert engine["threads"] == image_tower.ENGINE_THREADS
    assert engine["batch"] == image_tower.ENGINE_BATCH


def test_onnx_index_equals_torch_with_error_rows(
    exported: Collection, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _choose(exported, "onnxruntime")
    fast = _index(photos, tmp_path / "fast", model=TINY)
    assert _engine(fast) == "onnxruntime"
    _choose(exported, "torch")
    slow = _index(photos, tmp_path / "slow", model=TINY)
    assert _engine(slow) == "torch"
    _assert_same(fast, slow)
    assert _rows(fast) == _rows(slow)
    status, error = _rows(fast)["broken.png"]
    assert status == "error" and "not recognised" in (error or "")
    assert fast.last_report.errors == 1
    assert [path for path, _ in fast.last_report.error_samples] == ["broken.png"]
    # and decoded in this process (workers=0), the same
    _choose(exported, "onnxruntime")
    inline = _index(photos, tmp_path / "inline", model=TINY, workers=0)
    assert _engine(inline) == "onnxruntime"
    _assert_same(inline, slow)
    # the switch turns it off
    monkeypatch.setenv(image_tower.ENV_SWITCH, "0")
    assert _engine(_index(photos, tmp_path / "off", model=TINY)) == "torch"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_export_falls_back_to_torch(
    exported: Collection, photos: Path, tmp_path: Path, damage: str
) -> None:
    _choose(exported, "torch")
    want = _index(photos, tmp_path / "torch", model=TINY)
    _choose(exported, "onnxruntime")
    model = _meta_path(exported).parent / "model.onnx"
    size = model.stat().st_size
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[: size // 2])
    else:  # same size, so it passes the meta check and fails to load
        model.write_bytes(b"\0" * size)
    got = _index(photos, tmp_path / "damaged", model=TINY)
    assert _engine(got) == "torch"
    _assert_same(got, want)
    assert not any("Traceback" in n for n in got.last_report.notices)


def test_old_export_is_timed_on_the_next_torch_run(
    exported: Collection, photos: Path, tmp_path: Path
) -> None:
    path = _meta_path(exported)
    meta = json.loads(path.read_text())
    del meta["engine"]  # an export made before index runs timed the engines
    path.write_text(json.dumps(meta))
    assert image_tower.engine_choice(exported.manifest["encoder"]) is None
    c = _index(photos, tmp_path / "again", model=TINY)
    assert _engine(c) == "torch"
    engine = json.loads(path.read_text())["engine"]
    assert engine["choice"] in ("torch", "onnxruntime", "openvino")


CHILD = """
import json, sys
from vlmsearch.cli.app import main
sys.argv = ["vlmsearch", "index", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    if e.code:
        raise
print(json.dumps(sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)))
"""


def test_fast_path_imports_no_torch(exported: Collection) -> None:
    _choose(exported, "onnxruntime")
    root = Path(exported.manifest["root"])
    make_images(root, 4, prefix="more")  # new files: they must be encoded
    (root / "broken.png").write_bytes(b"not an image at all")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), "-c", str(exported.path), "--device", "cpu",
         "--workers", "2", "-q"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert "Traceback" not in out.stderr
    c = Collection.open(exported.path)
    assert _engine(c) == "onnxruntime"
    assert _rows(c)["broken.png"][0] == "error"
    assert sum(status == "ok" for status, _ in _rows(c).values()) == 7


def test_asif_default_onnx_equals_torch(tmp_path: Path) -> None:
    """The offline ASIF default (EfficientNet-Lite0 + MiniLM, prototype anchors) on the
    bundled sample photos: the export's raw features through the anchors, as torch."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("sentence_transformers")
    from vlmsearch.samples import copy_samples

    root = tmp_path / "samples"
    copy_samples(root)
    first = _index(root, tmp_path / "first", model="asif")
    assert first.manifest["encoder"]["kind"] == "asif"
    tower_spec = first.manifest["encoder"]["image_encoder"]
    path = image_tower.export_dir(tower_spec) / "meta.json"
    meta = json.loads(path.read_text())
    meta["engine"]["choice"] = "onnxruntime"
    path.write_text(json.dumps(meta))
    fast = _index(root, tmp_path / "fast", model="asif")
    assert _engine(fast) == "onnxruntime" and len(fast) == 7
    meta["engine"]["choice"] = "torch"
    path.write_text(json.dumps(meta))
    slow = _index(root, tmp_path / "slow", model="asif")
    assert _engine(slow) == "torch"
    assert fast.manifest["vectors"] == "sparse"
    _assert_same(fast, slow)


def test_only_a_cpu_run_uses_the_export(
    exported: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmsearch.ingest.image_engine import onnx_index_encoder
    from vlmsearch.models.lazy_encoder import LazyEncoder
    from vlmsearch.runtime import surely_cpu

    _choose(exported, "onnxruntime")
    spec = exported.manifest["encoder"]

    def never() -> None:
        raise AssertionError("the torch encoder must not be built")

    assert onnx_index_encoder(LazyEncoder(spec, never, "cpu")) is not None
    assert onnx_index_encoder(LazyEncoder(spec, never, "cuda:0")) is None
    assert surely_cpu("cpu") and not surely_cpu("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert surely_cpu(None) and surely_cpu("auto")
