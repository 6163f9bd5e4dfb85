"""Torch-free text queries: indexing exports the text tower to ONNX, a text search runs it
with onnxruntime, and every other case falls back to the torch encoder (issue 6, cold CLI).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.models.encoders import load_encoder
from vlmsearch.models.onnx import text_tower
from vlmsearch.search.query import build_terms

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

runner = CliRunner()
QUERIES = ["a red square", "  BLUE   things!  ", "green; 42 trees", "ünïcödé & emoji 🐶"]


@pytest.fixture(autouse=True)
def _onnx_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(text_tower.ENV_SWITCH, "1")  # conftest turns it off for other tests


def ok(res) -> None:
    assert res.exit_code == 0, (res.stdout, res.stderr)


@pytest.fixture
def tiny_coll(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    make_images(root, 12)
    res = runner.invoke(app, ["index", str(root), "--model", TINY, "--workers", "0", "-q"])
    ok(res)
    assert "note:" not in res.stderr  # a working export is silent
    return root / ".vlmsearch"


def random_text(rng: random.Random) -> str:
    pieces = [
        "dog", "Cat", "it's", "they'll", "3", "14", "!!", "...", "é", "ß", "日本", "🚗",
        "&amp;", "  ", "\t", "a-b", "ﬁ", "O'Neil", "don't", "x" * 40, "ÅNGSTRÖM",
    ]  # fmt: skip
    return "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(0, 30)))


def test_bpe_tokenizer_equals_open_clip() -> None:
    from vlmsearch.models.encoders.openclip_text import bpe_tokenizer

    tok = load_encoder(TINY)._tokenizer  # type: ignore[attr-defined]
    bpe = bpe_tokenizer(tok)
    rng = random.Random(0)
    texts = list(text_tower.CHECK_TEXTS) + [random_text(rng) for _ in range(300)]
    for t in texts:
        assert bpe.encode(text_tower.clip_clean(t)).ids == tok.encode(t), repr(t)


def test_index_exports_and_text_search_matches_torch(
    tiny_coll: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coll = Collection.open(tiny_coll)
    spec = coll.manifest["encoder"]
    meta = json.loads((text_tower.export_dir(spec) / "meta.json").read_text())
    assert meta["spec"] == spec and meta["style"] == "clip"
    assert meta["check"]["min_cosine"] >= text_tower.MIN_COSINE

    light = {q: coll.search(q, k=6) for q in QUERIES}
    assert coll._encoder is None  # the torch encoder was never loaded
    monkeypatch.setenv(text_tower.ENV_SWITCH, "0")
    full = Collection.open(tiny_coll)
    for q in QUERIES:
        want = full.search(q, k=6)
        assert [h.id for h in light[q]] == [h.id for h in want], q
        np.testing.assert_allclose([h.score for h in light[q]], [h.score for h in want], atol=1e-5)
    assert full._encoder is not None


def test_cold_text_search_imports_no_torch(tiny_coll: Path) -> None:
    code = (
        "import sys, json\n"
        "from vlmsearch.cli.app import main\n"
        f"sys.argv = ['vlmsearch', 'search', 'a red square', '-c', {str(tiny_coll)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = ['torch', 'open_clip', 'torchvision', 'transformers']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    hits = json.loads(proc.stdout)
    assert len(hits) == 10 and hits[0]["rank"] == 1


def test_image_queries_and_switch_off_use_torch(
    tiny_coll: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmsearch.models.onnx import image_tower

    coll = Collection.open(tiny_coll)
    first = str(tiny_coll.parent / "img0000.png")
    assert coll.search("a red square", image=first, k=3)
    assert coll._encoder is None  # the image tower is exported too (issue 15)
    monkeypatch.setenv(image_tower.ENV_SWITCH, "0")
    coll = Collection.open(tiny_coll)
    assert coll.search("a red square", image=first, k=3)
    assert coll._encoder is not None  # without it, an image term needs the full encoder

    monkeypatch.setenv(text_tower.ENV_SWITCH, "0")
    coll = Collection.open(tiny_coll)
    coll.search("a red square", k=3)
    assert coll._encoder is not None


@pytest.mark.parametrize("damage", ["stale key", "no model file"])
def test_damaged_export_falls_back_to_torch(tiny_coll: Path, damage: str) -> None:
    coll = Collection.open(tiny_coll)
    folder = text_tower.export_dir(coll.manifest["encoder"])
    want = [h.id for h in coll.search("a blue circle", k=5)]
    if damage == "stale key":
        meta = json.loads((folder / "meta.json").read_text())
        meta["key"] = "0" * 32
        (folder / "meta.json").write_text(json.dumps(meta))
    else:
        (folder / "model.onnx").unlink()
    coll = Collection.open(tiny_coll)
    assert [h.id for h in coll.search("a blue circle", k=5)] == want
    assert coll._encoder is not None

    # the next index run replaces the damaged export
    res = runner.invoke(app, ["index", str(tiny_coll.parent), "--workers", "0", "-q"])
    ok(res)
    assert text_tower.open_tower(coll.manifest["encoder"]) is not None


def test_an_export_that_disagrees_is_not_kept() -> None:
    enc = load_encoder(TINY)
    spec, build = enc.onnx_text_export()  # type: ignore[misc]

    def wrong_ids():
        tower = build()
        real = tower.reference_ids
        tower.reference_ids = lambda texts: [[i + 1 for i in r] for r in real(texts)]
        return tower

    def drifting():
        tower = build()
        rng = np.random.default_rng(0)
        tower.reference = lambda texts: rng.normal(size=(len(texts), enc.dim)).astype("f4")
        return tower

    note = text_tower.ensure_export(spec, wrong_ids)
    assert note and "tokenizer differs" in note
    note = text_tower.ensure_export(spec, drifting)
    assert note and "drift" in note and "min cosine" in note
    folder = text_tower.export_dir(spec)
    assert not folder.exists() and not list(folder.parent.iterdir())  # no half-written folder
    assert text_tower.open_tower(spec) is None


def tiny_sentence_transformer(out: Path, max_seq_length: int = 12) -> Path:
    """A 2-layer BERT with a 16-word WordPiece vocabulary, mean pooling and normalisation."""
    pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf = out / "hf"
    hf.mkdir(parents=True)
    words = "a photo of the dog cat red car on beach blue sky ##s ##ing".split()
    (hf / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    tok = BertTokenizerFast(vocab_file=str(hf / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(words) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(hf)
    tok.save_pretrained(hf)
    modules = [Transformer(str(hf), max_seq_length=max_seq_length), Pooling(32, "mean")]
    SentenceTransformer(modules=[*modules, Normalize()]).save(str(out / "st"))
    return out / "st"


def test_sentence_transformers_export_matches_and_truncates(tmp_path: Path) -> None:
    from vlmsearch.models.unimodal import load_text_encoder

    enc = load_text_encoder(f"sentence-transformers:{tiny_sentence_transformer(tmp_path)}")
    assert text_tower.ensure_export(enc.spec, enc.onnx_text_export) is None
    tower = text_tower.open_tower(enc.spec)
    assert tower is not None and tower.meta["style"] == "hf" and tower.meta["max_length"] == 12
    texts = ["A Photo of the DOG", "red car " * 20, "zebra unknown words", ""]
    assert len(tower.token_ids(texts)[1]) == 12  # truncated like the model's own tokenizer
    got, want = tower.encode_texts(texts), enc.encode_texts(texts)
    assert np.min(np.sum(got * want, axis=1)) > 0.9999


def test_asif_text_queries_through_the_export(tmp_path: Path) -> None:
    """ASIF: the text encoder's export, then the anchors' relative representations."""
    from tests.models.test_asif_collection import build_anchors, photos, write_pairs_csv

    csv = write_pairs_csv(tmp_path / "anchor-data", 24, seed=1)
    ok(build_anchors(tmp_path / "anchors", csv, "-q"))
    root = tmp_path / "photos"
    photos(root, 8, seed=2)
    args = ["--anchors", str(tmp_path / "anchors"), "--asif-k", "16", "--asif-p", "8"]
    ok(runner.invoke(app, ["index", str(root), *args, "--workers", "0", "-q"]))
    coll = Collection.open(root / ".vlmsearch")
    light = coll._query_encoder(build_terms(["a red photo"]))
    assert type(light).__name__ == "AsifTextQueries"
    got = light.encode_texts(["a red photo", "blue sky"])
    assert coll._encoder is None
    want = coll.encoder.encode_texts(["a red photo", "blue sky"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (np.count_nonzero(got, axis=1) <= 16).all()


def test_a_model_that_cannot_be_exported_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmsearch.models.encoders.openclip import OpenClipEncoder

    monkeypatch.setattr(OpenClipEncoder, "_text_tower", lambda self: None)
    make_images(tmp_path / "imgs", 4)
    res = runner.invoke(app, ["index", str(tmp_path / "imgs"), "--model", TINY, "--workers", "0"])
    ok(res)
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "cannot be exported" in notes[0]
    coll = Collection.open(tmp_path / "imgs" / ".vlmsearch")
    assert len(coll.search("a red square", k=3)) == 3 and coll._encoder is not None


def test_classify_uses_the_export_and_agrees(
    tiny_coll: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coll = Collection.open(tiny_coll)
    light = coll.classify("red,green,blue,yellow", top_k=2)
    assert coll._encoder is None
    monkeypatch.setenv(text_tower.ENV_SWITCH, "0")
    full = Collection.open(tiny_coll).classify("red,green,blue,yellow", top_k=2)
    assert len(light) == 12
    assert [[lab for lab, _ in p.top] for p in light] == [[lab for lab, _ in p.top] for p in full]
    np.testing.assert_allclose(
        [[s for _, s in p.top] for p in light], [[s for _, s in p.top] for p in full], atol=1e-5
    )
