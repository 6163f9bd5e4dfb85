"""``index --precision`` (issue 21): reduced precision is used only when asked for, the
manifest records it, a collection refuses another precision without ``--rebuild``, and
the int8 and bf16 engines give vectors close to fp32's. Also the remembered spec that
lets a new collection of a model built before skip building it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.errors import CollectionError, ModelError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.onnx import engines, image_tower, quantize

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(autouse=True)
def _onnx_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(image_tower.ENV_SWITCH, "1")


def _index(root: Path, coll: Path, precision: str | None = None, **kw) -> Collection:
    opts = IngestOptions(workers=0, precision=precision, rebuild=kw.pop("rebuild", False))
    return Collection.index(root, coll, options=opts, device=kw.pop("device", "cpu"), **kw)


def _vectors(c: Collection) -> dict[str, np.ndarray]:
    vt = c.vectors
    paths = dict(zip(c.table["id"].to_pylist(), c.table["path"].to_pylist(), strict=True))
    return {paths[i]: v for i, v in zip(vt.ids.tolist(), vt.get(vt.ids), strict=True)}


def _min_cosine(a: Collection, b: Collection) -> float:
    va, vb = _vectors(a), _vectors(b)
    assert va.keys() == vb.keys() and va
    return min(
        float(va[p] @ vb[p] / (np.linalg.norm(va[p]) * np.linalg.norm(vb[p]))) for p in va
    )


def _executor(c: Collection) -> dict:
    return c.manifest["ingest"]["executor"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    make_images(root, 6, sizes=[(48, 40), (31, 77), (300, 45), (250, 251)])
    return root


@pytest.fixture
def exact(photos: Path, tmp_path: Path) -> Collection:
    """fp32 by default: nothing asked, nothing reduced (this run also makes the export)."""
    c = _index(photos, tmp_path / "fp32", model=TINY)
    assert c.manifest["precision"] == "fp32"
    assert _executor(c)["precision"] == "fp32"
    return c


def test_int8_is_recorded_kept_and_refused_elsewhere(
    exact: Collection, photos: Path, tmp_path: Path
) -> None:
    folder = image_tower.export_dir(exact.manifest["encoder"])
    assert not (folder / quantize.INT8_FILE).exists()  # never made unless asked for
    c = _index(photos, tmp_path / "int8", "int8", model=TINY)
    assert c.manifest["precision"] == "int8"
    assert _executor(c) == {"kind": "local", "engine": "onnxruntime", "precision": "int8"}
    record = json.loads((folder / "meta.json").read_text())["int8"]
    assert record["ok"] and record["min_cosine"] >= quantize.MIN_COSINE
    assert (folder / quantize.INT8_FILE).stat().st_size == record["bytes"]
    assert _min_cosine(c, exact) >= 0.98
    assert _min_cosine(c, exact) < 1 - 1e-7  # it really ran the quantised graph

    make_images(photos, 2, prefix="more")
    again = _index(photos, c.path, model=None)  # no flag: the collection's own precision
    assert again.manifest["precision"] == "int8" and _executor(again)["precision"] == "int8"
    assert len(again) == 8
    with pytest.raises(CollectionError, match="--precision int8.*--rebuild"):
        _index(photos, c.path, "fp32")
    assert len(Collection.open(c.path)) == 8  # nothing lost by the refusal
    rebuilt = _index(photos, c.path, "fp32", rebuild=True, model=TINY)
    assert rebuilt.manifest["precision"] == "fp32"


def test_fp32_collection_refuses_int8_without_rebuild(exact: Collection, photos: Path) -> None:
    with pytest.raises(CollectionError, match="--precision fp32"):
        _index(photos, exact.path, "int8")
    assert Collection.open(exact.path).manifest["precision"] == "fp32"


def test_bf16_needs_openvino_and_the_instructions(
    exact: Collection, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engines.openvino_available() and engines.cpu_has_bf16():
        c = _index(photos, tmp_path / "bf16", "bf16", model=TINY)
        assert _executor(c) == {"kind": "local", "engine": "openvino", "precision": "bf16"}
        assert c.manifest["precision"] == "bf16"
        assert 0.99 <= _min_cosine(c, exact) < 1 - 1e-7
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    with pytest.raises(ModelError, match="bf16 instructions"):
        _index(photos, tmp_path / "nobf16", "bf16", model=TINY)
    assert not (tmp_path / "nobf16").exists()  # refused before anything was created


def test_reduced_precision_refused_off_the_cpu_before_any_model(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vlmsearch.models.encoders as encoders

    def never(*_a, **_k):
        raise AssertionError("no model may load before the refusal")

    monkeypatch.setattr(encoders, "load_encoder", never)
    with pytest.raises(ModelError, match="not available on device cuda"):
        _index(photos, tmp_path / "gpu", "int8", model=TINY, device="cuda")
    with pytest.raises(ModelError, match="with --ray"):
        opts = IngestOptions(precision="int8", ray="auto")
        Collection.index(photos, tmp_path / "ray", options=opts, device="cpu", model=TINY)


def test_cli_rejects_an_unknown_precision(photos: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vlmsearch.cli.app import app

    out = CliRunner().invoke(
        app, ["index", str(photos), "-c", str(tmp_path / "c"), "--precision", "fp16"]
    )
    assert out.exit_code != 0
    assert "--precision must be fp32, bf16 or int8" in out.output
    assert "Traceback" not in out.output and not (tmp_path / "c").exists()


def test_openvino_engine_equals_torch(
    exact: Collection, photos: Path, tmp_path: Path
) -> None:
    if not engines.openvino_available():
        pytest.skip("OpenVINO is not installed")
    meta_path = image_tower.export_dir(exact.manifest["encoder"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["engine"]["images_per_s"]["openvino"] > 0  # timed with the others
    meta["engine"]["choice"] = "openvino"
    meta_path.write_text(json.dumps(meta))
    ov = _index(photos, tmp_path / "ov", model=TINY)
    assert _executor(ov)["engine"] == "openvino"
    meta["engine"]["choice"] = "torch"
    meta_path.write_text(json.dumps(meta))
    pt = _index(photos, tmp_path / "pt", model=TINY)
    assert _executor(pt)["engine"] == "torch"
    assert _min_cosine(ov, pt) >= 1 - 1e-4


def test_new_collection_of_a_known_model_is_not_built(
    exact: Collection, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec remembered from the first build stands in for the model: a new collection
    indexes through the export without building it, with the same vectors."""
    meta_path = image_tower.export_dir(exact.manifest["encoder"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["engine"]["choice"] = "onnxruntime"
    meta_path.write_text(json.dumps(meta))
    import vlmsearch.models.encoders as encoders

    def never(*_a, **_k):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(encoders.encoder_class("open_clip"), "from_name", never)
    monkeypatch.setattr(encoders.encoder_class("open_clip"), "from_spec", never)
    c = _index(photos, tmp_path / "second", model=TINY)
    assert _executor(c)["engine"] == "onnxruntime"
    assert c.manifest["encoder"] == exact.manifest["encoder"]
    assert c.manifest["dim"] == exact.manifest["dim"]
    assert _min_cosine(c, exact) >= 1 - 1e-4


def test_int8_that_drifts_is_refused_quietly(
    exact: Collection,
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """EfficientNet-Lite0's int8 copy drifts to cosine 0.56; here any drift is too much."""
    monkeypatch.setattr(quantize, "MIN_COSINE", 1.0)
    with pytest.raises(ModelError, match="drifts too far from fp32.*fp32 or bf16"):
        _index(photos, tmp_path / "int8", "int8", model=TINY)
    folder = image_tower.export_dir(exact.manifest["encoder"])
    assert not quantize.int8_ready(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.onnx"]
    assert "WARNING" not in capfd.readouterr().err  # the quantiser's log stays quiet
    assert Collection.open(exact.path).manifest["precision"] == "fp32"
