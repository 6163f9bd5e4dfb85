"""Rerankers: the interface and fusion, region teacher and student (ViLD-style), CoCa
caption likelihood, VQAScore and image-text matching heads -- all with tiny random models
built here, no network."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.errors import ModelError, QueryError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.rerank import load_reranker
from vlmsearch.rerank.base import Candidate, RerankQuery, fuse

runner = CliRunner()


@pytest.fixture
def coll(tmp_path: Path) -> Collection:
    root = tmp_path / "photos"
    make_images(root, 10)
    return Collection.index(root, model=TINY, options=IngestOptions(workers=0))


def candidates(c: Collection) -> list[Candidate]:
    rows = c.table.to_pylist()
    return [Candidate(r["id"], str(c.root / r["path"]), 0.1 * i) for i, r in enumerate(rows)]


def assert_permutation_equivariant(score: Callable[[list[Candidate]], np.ndarray], cands) -> None:
    base = score(cands)
    perm = np.random.default_rng(0).permutation(len(cands))
    again = score([cands[i] for i in perm])
    np.testing.assert_allclose(again, base[perm], rtol=1e-4, atol=1e-6)


# -- interface --
def test_fusion_rules() -> None:
    first = np.array([0.3, 0.2, 0.1])
    rerank = np.array([-5.0, -1.0, np.nan])
    np.testing.assert_array_equal(fuse(first, rerank, None)[:2], rerank[:2])
    assert fuse(first, rerank, None)[2] == -np.inf  # unscored sorts last
    # first stage min-max scales to [1, 0.5, 0], the finite rerank scores to [0, 1]
    want = [0.5 * 0 + 0.5 * 1, 0.5 * 1 + 0.5 * 0.5]
    np.testing.assert_allclose(fuse(first, rerank, 0.5)[:2], want)
    np.testing.assert_allclose(fuse(first, rerank[:2].tolist() + [0.0], 0.0), [1.0, 0.5, 0.0])
    with pytest.raises(QueryError, match=r"\[0, 1\]"):
        fuse(first, rerank, 1.5)


def test_unknown_reranker_and_option_are_clear_errors() -> None:
    with pytest.raises(ModelError, match="unknown reranker 'nope'.*region"):
        load_reranker("nope")
    with pytest.raises(QueryError, match="no option colour"):
        load_reranker("region", colour=1)
    with pytest.raises(QueryError, match="unknown region mode"):
        load_reranker("region:sideways")


def test_rerank_reorders_top_and_keeps_the_tail(coll: Collection) -> None:
    class Reverse:
        kind, name, needs_text = "reverse", "reverse", False

        def score(self, query, cands, progress=None):
            from vlmsearch.rerank.base import RerankScores

            return RerankScores(-np.asarray([c.score for c in cands]))

    plain = coll.search("a red square", k=10)
    hits = coll.search("a red square", k=10, rerank=Reverse(), rerank_top=4)
    assert [h.id for h in hits[:4]] == [h.id for h in plain[:4]][::-1]
    assert [h.id for h in hits[4:]] == [h.id for h in plain[4:]]
    assert [h.rank for h in hits] == list(range(1, 11))
    assert hits[0].reranker == "reverse" and hits[0].scores["first"] == plain[3].score
    assert hits[5].reranker is None and hits[5].score == plain[5].score


# -- region reranker --
class RednessEncoder(Encoder):
    """A synthetic encoder where 'red' is true by construction: an image embeds as how much
    more red than green/blue it is (plus a constant), the text 'red' as the red axis."""

    kind = "test-redness"

    @classmethod
    def from_name(cls, name: str, device: str | None = None, **_: Any) -> Encoder:
        return cls()

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> Encoder:
        return cls()

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": "redness", "dim": 2}

    @property
    def dim(self) -> int:
        return 2

    def image_transform(self):
        from torchvision import transforms as T

        return T.Compose([T.Resize((16, 16)), T.ToTensor()])

    def encode_pixels(self, pixels) -> np.ndarray:
        p = pixels.numpy().astype(np.float32)
        red = np.clip(p[:, 0] - (p[:, 1] + p[:, 2]) / 2, 0, None).mean(axis=(1, 2))
        v = np.stack([red, np.full_like(red, 0.05)], axis=1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode_texts(self, texts) -> np.ndarray:
        return np.asarray([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts], np.float32)


def test_region_teacher_finds_a_pasted_patch(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    root.mkdir()
    grey = Image.new("RGB", (120, 90), (128, 128, 128))
    grey.save(root / "plain.png")
    patched = grey.copy()
    patched.paste(Image.new("RGB", (30, 22), (230, 20, 20)), (80, 55))  # small red patch
    patched.save(root / "patch.png")
    c = Collection.index(root, encoder=RednessEncoder(), options=IngestOptions(workers=0))
    hits = c.search("red", k=2, rerank="region:teacher", rerank_top=2)
    assert Path(hits[0].path).name == "patch.png"
    assert hits[0].scores["rerank"] > hits[1].scores["rerank"] + 0.5
    assert hits[0].scores["rerank"] > hits[0].scores["first"]  # the region beats the whole
    x0, y0, x1, y1 = hits[0].box
    assert x0 < 95 < x1 and y0 < 66 < y1  # the best region covers the patch
    # mixed with the whole-image score: exactly the documented weighted sum
    mixed = c.search(
        "red", k=2, rerank="region:teacher", rerank_top=2, rerank_options={"whole_weight": 0.25}
    )
    want = 0.75 * hits[0].scores["rerank"] + 0.25 * hits[0].scores["first"]
    assert mixed[0].scores["rerank"] == pytest.approx(want, abs=1e-3)


def test_region_reranker_is_permutation_equivariant(coll: Collection) -> None:
    r = load_reranker("region:teacher")
    q = RerankQuery("a red square", coll.encoder.encode_texts(["a red square"])[0], coll)
    assert_permutation_equivariant(lambda cs: r.score(q, cs).scores, candidates(coll)[:6])


def test_unreadable_candidate_gets_an_error_and_sorts_last(coll: Collection) -> None:
    hits = coll.search("a red square", k=10)
    Path(hits[0].path).write_bytes(b"not an image any more")
    again = coll.search("a red square", k=10, rerank="region:teacher", rerank_top=10)
    assert again[-1].id == hits[0].id and "not an image" in (again[-1].error or "")
    assert all(h.error is None for h in again[:-1])


def test_distillation_learns_and_the_student_is_used(coll: Collection) -> None:
    from vlmsearch.rerank.region.distill import distill

    with pytest.raises(QueryError, match="no region student"):
        coll.search("a red square", k=3, rerank="region:student")
    _, report = distill(coll, "tiny", epochs=6, max_images=10, seed=0)
    assert report.losses[-1] < report.losses[0] * 0.7
    assert report.held_out_cosine_after > report.held_out_cosine_before + 0.3
    assert report.regions == 46 * report.images
    reopened = Collection.open(coll.path)
    entry = reopened.manifest["region_student"]
    assert reopened.layout.file(entry["file"]).is_file() and entry["report"]["epochs"] == 6
    hits = reopened.search("a red square", k=3, rerank="region", rerank_top=5)
    assert hits[0].reranker == "region:student" and len(hits[0].box) == 4
    teacher = reopened.search("a red square", k=3, rerank="region:teacher", rerank_top=5)
    assert teacher[0].reranker == "region:teacher"


def test_distillation_with_label_text(coll: Collection) -> None:
    from vlmsearch.rerank.region.distill import distill

    _, report = distill(
        coll,
        "tiny",
        epochs=4,
        max_images=6,
        labels=["red", "green"],
        save=False,
        train_backbone=False,  # the frozen-backbone path: feature maps computed once
    )
    assert report.text_loss and report.losses[-1] < report.losses[0]
    assert "region_student" not in Collection.open(coll.path).manifest


# -- CoCa --
def test_coca_log_probs(coll: Collection) -> None:
    import torch

    from vlmsearch.rerank.coca import caption_log_probs

    r = load_reranker("coca:vlms-tiny-coca", device="cpu")
    cands = candidates(coll)[:5]
    q = RerankQuery("a red square on a table")
    scores = r.score(q, cands).scores
    assert np.all(scores <= 0) and np.isfinite(scores).all() and np.ptp(scores) > 0
    assert_permutation_equivariant(lambda cs: r.score(q, cs).scores, cands)
    # padding: the same caption with its padding cut away, or kept, scores the same
    enc = r.encoder
    tokens = enc._tokenizer(["a red square"])
    used = int((tokens != 0).sum())
    pixels = torch.stack([enc.image_transform()(Image.open(cands[0].path).convert("RGB"))])
    with torch.inference_mode():
        full = enc.model(pixels, tokens)
        labels = full["labels"]
        manual = -torch.nn.functional.cross_entropy(
            full["logits"].transpose(1, 2), labels, ignore_index=0, reduction="sum"
        )
        cut = caption_log_probs(enc.model, pixels, tokens[:, : used + 1])
        padded = caption_log_probs(enc.model, pixels, tokens)
        per_token = caption_log_probs(enc.model, pixels, tokens, normalize=True)
    assert float(cut) == pytest.approx(float(padded), abs=1e-4)
    assert float(padded) == pytest.approx(float(manual), abs=1e-4)
    assert float(per_token) == pytest.approx(
        float(padded) / (used - 1), abs=1e-4
    )  # EOT in, SOT out


def test_coca_refuses_a_non_coca_model() -> None:
    with pytest.raises(ModelError, match="not a CoCa model"):
        load_reranker(f"coca:{TINY}")


# -- transformers heads --
@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny LLaVA- and Qwen2-VL-style (VQA), ViLT, BLIP and FLAVA models, saved locally."""
    import torch

    from vlmsearch.testing import build_itm, build_llava, build_qwen2_vl

    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {"llava": build_llava(d / "llava"), "qwen2-vl": build_qwen2_vl(d / "qwen2-vl")}
    for family in ("vilt", "blip", "flava"):
        out[family] = build_itm(d / family, family)
    return out


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_vqascore_is_p_yes_in_0_1(coll: Collection, hf_models, family) -> None:
    import torch

    from vlmsearch.rerank.vqa import prompt_text

    r = load_reranker(f"vqa:{hf_models[family]}", device="cpu")
    q = RerankQuery("a red square")
    cands = candidates(coll)[:5]
    scores = r.score(q, cands).scores
    assert np.all((scores >= 0) & (scores <= 1))
    assert_permutation_equivariant(lambda cs: r.score(q, cs).scores, cands)
    # one candidate by hand: the softmax over the vocabulary at the answer position
    text = prompt_text(r.processor, "a red square")
    assert "Does this figure show 'a red square'? Please answer yes or no." in text
    inputs = r.processor(
        images=[[Image.open(cands[0].path).convert("RGB")]], text=[text], return_tensors="pt"
    )
    with torch.inference_mode():
        p = r.model(**inputs).logits[0, -1].softmax(-1)[r.yes]
    assert scores[0] == pytest.approx(float(p), abs=1e-5)


@pytest.mark.parametrize("family", ["vilt", "blip", "flava"])
def test_itm_heads_give_match_probabilities(coll: Collection, hf_models, family) -> None:
    r = load_reranker(f"itm:{hf_models[family]}", device="cpu")
    assert r.family == family
    q = RerankQuery("a red square")
    cands = candidates(coll)[:4]
    scores = r.score(q, cands).scores
    assert np.all((scores >= 0) & (scores <= 1)) and np.isfinite(scores).all()
    assert_permutation_equivariant(lambda cs: r.score(q, cs).scores, cands)


def test_generative_rerankers_need_text_and_a_model(coll: Collection, hf_models) -> None:
    with pytest.raises(QueryError, match="needs a text query"):
        coll.search(image=candidates(coll)[0].path, rerank=f"itm:{hf_models['vilt']}")
    with pytest.raises(ModelError, match="cannot load"):
        load_reranker("vqa:/no/such/model")


def test_cli_rerank_json_and_errors(coll: Collection) -> None:
    base = ["search", "a red square", "-c", str(coll.path), "--rerank", "region:teacher"]
    res = runner.invoke(app, [*base, "--rerank-top", "5", "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["reranker"] == "region:teacher" and len(rows[0]["box"]) == 4
    assert set(rows[0]["scores"]) == {"first", "rerank"}
    res = runner.invoke(app, [*base, "--rerank-option", "whole_weight=2"])
    assert res.exit_code == 1 and "whole_weight" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*base, "--rerank-option", "oops"])
    assert res.exit_code == 1 and "KEY=VALUE" in res.output
    res = runner.invoke(app, [*base, "--fusion", "0.5", "-k", "2", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["score"] == pytest.approx(1.0)


def test_cli_distill(coll: Collection) -> None:
    res = runner.invoke(
        app,
        [
            "distill",
            "-c",
            str(coll.path),
            "--backbone",
            "tiny",
            "--epochs",
            "2",
            "--max-images",
            "4",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["epochs"] == 2 and report["speedup"] > 0
    res = runner.invoke(app, ["distill", "-c", str(coll.path), "--backbone", "nope"])
    assert res.exit_code == 1 and "unknown backbone" in res.output


def test_region_embeddings_are_reused_until_the_file_changes(coll: Collection) -> None:
    import os

    from vlmsearch.rerank.region.teacher import RegionReranker

    r = RegionReranker(mode="teacher")
    q = RerankQuery("x", coll.encoder.encode_texts(["x"])[0], coll)
    cands = candidates(coll)[:3]
    calls: list[int] = []
    real = coll.encoder.student_features
    coll.encoder.student_features = lambda px: calls.append(len(px)) or real(px)
    first = r.score(q, cands).scores
    n = len(calls)
    assert n > 0
    np.testing.assert_array_equal(r.score(q, cands).scores, first)
    assert len(calls) == n  # nothing encoded again
    st = os.stat(cands[0].path)
    os.utime(cands[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r.score(q, cands)
    assert len(calls) > n  # the changed file only


def test_asif_student_predicts_features_then_projects(tmp_path: Path) -> None:
    from tests.cli_helpers import ok, run
    from tests.models.test_asif_collection import build_anchors, photos, write_pairs_csv
    from vlmsearch.rerank.region.crops import teacher_targets
    from vlmsearch.rerank.region.distill import distill
    from vlmsearch.rerank.region.proposals import CONTEXT, expand, region_boxes
    from vlmsearch.rerank.region.student import load_student

    csv = write_pairs_csv(tmp_path / "anchor-data", 12, seed=1, corrupt=False)
    ok(build_anchors(tmp_path / "anchors", csv, "-q"))
    photos(tmp_path / "photos", 8, seed=2)
    ok(run("index", tmp_path / "photos", "--anchors", tmp_path / "anchors", "--workers", 0, "-q"))
    coll = Collection.open(tmp_path / "photos" / ".vlmsearch")
    enc = coll.encoder
    assert coll.sparse and enc.student_space == "features"
    # the teacher's embeddings are the anchors' projection of its dense targets' crops
    image = Image.open(next((tmp_path / "photos").glob("*.png"))).convert("RGB")
    boxes = region_boxes(image)[:5]
    teacher, target = teacher_targets(enc, image, boxes)
    assert target.shape[1] != coll.dim and np.count_nonzero(target) > 0.9 * target.size
    crop = enc.encode_images([image.crop(tuple(round(v) for v in boxes[0]))])[0]
    wide_box = expand(boxes[0], CONTEXT, *image.size)
    wider = enc.encode_images([image.crop(tuple(round(v) for v in wide_box))])
    np.testing.assert_allclose(
        teacher[0], (crop + wider[0]) / np.linalg.norm(crop + wider[0]), atol=1e-5
    )
    with pytest.raises(QueryError, match="ViLD-text"):
        distill(coll, "tiny", epochs=1, max_images=4, labels=["red"])
    _, report = distill(coll, "tiny", epochs=8, max_images=8, seed=0)
    assert report.space == "features" and report.losses[-1] < report.losses[0]
    # few anchors make every relative representation alike: judge the gap that is left
    gap_before, gap_after = 1 - report.held_out_cosine_before, 1 - report.held_out_cosine_after
    assert gap_after < 0.5 * gap_before
    reopened = Collection.open(coll.path)
    student = load_student(reopened)
    assert student is not None and student.cfg.space == "features"
    emb = student.embed(image, boxes)
    assert emb.shape == (5, coll.dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    hits = reopened.search("caption number 1", k=2, rerank="region", rerank_top=4)
    assert hits[0].reranker == "region:student" and len(hits[0].box) == 4
    hits = coll.search("caption number 1", k=2, rerank="region:teacher", rerank_top=4)
    assert hits[0].reranker == "region:teacher" and len(hits[0].box) == 4
