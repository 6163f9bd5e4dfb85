"""A re-index with nothing to encode never builds the encoder, and its reported time
includes the model load when there is one (issue 15, "Slow": a no-change `index` took
7-16 s and said "0.2s")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import TINY, draw_image, make_images
from vlmsearch import Collection
from vlmsearch.ingest import indexing
from vlmsearch.ingest.options import IngestOptions


def _opts() -> IngestOptions:
    return IngestOptions(batch_size=4, workers=0)


def _forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("the encoder was built")

    monkeypatch.setattr(indexing, "encoder_from_spec", refuse)


def test_no_change_reindex_builds_no_encoder(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "imgs"
    make_images(root, 6)
    Collection.index(root, model=TINY, options=_opts(), device="cpu")
    gen = Collection.open(root / ".vlmsearch").manifest["generation"]
    _forbid_loading(monkeypatch)
    coll = Collection.index(root, options=_opts(), device="cpu")
    rep = coll.last_report
    assert rep is not None
    assert (rep.unchanged, rep.encoded, rep.load_seconds) == (6, 0, 0.0)
    assert rep.index_factory  # still reported, from the stored index
    assert coll.manifest["generation"] == gen  # nothing was committed
    assert coll._encoder is None
    # a deletion needs no encoder either
    (root / "img0000.png").unlink()
    rep = Collection.index(root, options=_opts(), device="cpu").last_report
    assert rep is not None and (rep.deleted, rep.encoded) == (1, 0)
    assert len(Collection.open(root / ".vlmsearch")) == 5


def test_new_file_builds_the_encoder_and_time_includes_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "imgs"
    make_images(root, 4)
    Collection.index(root, model=TINY, options=_opts(), device="cpu")
    real = indexing.encoder_from_spec
    calls = []

    def slow(spec, device=None):
        calls.append(spec["name"])
        time.sleep(0.4)  # a model that takes a while to build
        return real(spec, device=device)

    monkeypatch.setattr(indexing, "encoder_from_spec", slow)
    draw_image(root / "new.png", (10, 200, 10), seed=9)
    coll = Collection.index(root, options=_opts(), device="cpu")
    rep = coll.last_report
    assert rep is not None and rep.encoded == 1 and len(calls) == 1
    assert rep.load_seconds >= 0.4
    assert rep.seconds >= rep.load_seconds + rep.encode_seconds
    assert coll._encoder is not None  # the one built is kept for queries


def test_no_change_reindex_with_cached_text_export_builds_no_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from vlmsearch.models.onnx import text_tower

    monkeypatch.setenv(text_tower.ENV_SWITCH, "1")
    root = tmp_path / "imgs"
    make_images(root, 3)
    first = Collection.index(root, model=TINY, options=_opts(), device="cpu")
    assert text_tower.export_ready(first.manifest["encoder"])
    _forbid_loading(monkeypatch)
    rep = Collection.index(root, options=_opts(), device="cpu").last_report
    assert rep is not None and rep.notices == [] and rep.encoded == 0


def test_missing_text_export_is_made_on_a_no_change_reindex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from vlmsearch.models.onnx import text_tower

    root = tmp_path / "imgs"
    make_images(root, 3)
    coll = Collection.index(root, model=TINY, options=_opts(), device="cpu")  # exports off
    spec = coll.manifest["encoder"]
    monkeypatch.setenv(text_tower.ENV_SWITCH, "1")
    assert not text_tower.export_ready(spec)
    Collection.index(root, options=_opts(), device="cpu")
    assert text_tower.export_ready(spec)  # the encoder was built for the export
