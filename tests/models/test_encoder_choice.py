"""One encoder-choice rule for every command that encodes (issue 15, item 1): ``classify
PATHS`` falls back to the offline default like ``index`` does, and ``--model asif`` /
``asif:ANCHORS`` name the ASIF encoder everywhere.

The fallback tests run the real offline encoders (EfficientNet-Lite0 + MiniLM, shipped in
pip packages) and skip when that extra is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, draw_image
from tests.models.test_asif_collection import no_clip_weights  # noqa: F401  (fixture)
from vlmsearch.cli.app import app
from vlmsearch.errors import ModelError
from vlmsearch.models.choice import parse_model_option

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_parse_model_option() -> None:
    assert parse_model_option("asif", None) == ("default", "asif")
    assert parse_model_option("ASIF", "asif") == ("default", "asif")
    assert parse_model_option("asif:/data/anchors", None) == ("/data/anchors", "asif")
    assert parse_model_option("ViT-B-32:/ckpt/asif.pt", None) == ("ViT-B-32:/ckpt/asif.pt", None)
    assert parse_model_option(TINY, None) == (TINY, None)
    assert parse_model_option(None, "asif") == (None, "asif")
    with pytest.raises(ModelError, match="ASIF"):
        parse_model_option("asif", "open_clip")


def test_model_asif_with_a_custom_anchor_set(tmp_path: Path) -> None:
    """``--model asif:ANCHORS`` reaches ASIF for index, search and classify PATHS (tiny
    open_clip towers on both sides: no weights needed)."""
    from tests.models.test_asif_collection import ASIF_K, build_anchors, photos, write_pairs_csv

    anchors = tmp_path / "anchors"
    csv = write_pairs_csv(tmp_path / "anchor-data", 24, seed=1, corrupt=False)
    res = build_anchors(anchors, csv, "-q")
    assert res.exit_code == 0, res.output
    pics = photos(tmp_path / "queries", 2, seed=9, prefix="q")
    root = tmp_path / "pics"
    photos(root, 5, seed=4)
    model = f"asif:{anchors}"
    res = run("index", root, "--model", model, "--asif-k", ASIF_K, "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    m = json.loads((root / ".vlmsearch" / "manifest.json").read_text())
    assert m["encoder"]["kind"] == "asif" and m["encoder"]["anchors"]["path"] == str(anchors)
    # the same model string is accepted as the collection's own by search
    res = run("search", "a photo", "-c", root, "--model", model, "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    res = run(
        "classify", pics[0], pics[1], "--labels", "red,blue", "--model", model, "--json",
        "--templates", "simple",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert [p["label"] in ("red", "blue") for p in json.loads(res.stdout)] == [True, True]


@pytest.mark.usefixtures("no_clip_weights")
def test_classify_paths_falls_back_offline_and_model_asif(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Quick tour's classify commands work offline, as index does."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("sentence_transformers")
    from vlmsearch.models.encoders.openclip import DEFAULT_MODEL
    from vlmsearch.samples import copy_samples

    photos = tmp_path / "photos"
    copy_samples(photos)
    cat, coffee = photos / "cat.jpg", photos / "coffee.jpg"
    res = run("classify", cat, coffee, "--labels", "cat,coffee", "--top-k", "2", "--json")
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)
    assert [p["label"] for p in preds] == ["cat", "coffee"]
    assert all(len(p["top"]) == 2 for p in preds)
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and DEFAULT_MODEL in notes[0] and "offline default" in notes[0]

    out = tmp_path / "predictions.parquet"
    res = run("classify", photos, "--labels=cat,coffee", "--parquet", out, "--templates=simple")
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows == 7
    labels = dict(zip(table["path"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert labels[str(cat)] == "cat" and labels[str(coffee)] == "coffee"

    # --model asif names the offline default explicitly: no fallback, so no notice
    res = run(
        "classify", cat, "--labels", "cat,coffee", "--model", "asif", "--json",
        "--templates", "simple",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["label"] == "cat" and "note:" not in res.stderr

    # ... and index --model asif builds an ASIF collection with it
    other = tmp_path / "two"
    draw_image(other / "a.png", (200, 30, 30))
    draw_image(other / "b.png", (30, 30, 200))
    res = run("index", other, "--model", "asif", "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    m = json.loads((other / ".vlmsearch" / "manifest.json").read_text())
    assert m["encoder"]["kind"] == "asif" and m["encoder"]["anchors"]["default"] is True
    assert m["encoder_choice"]["rule"] == "as requested"
