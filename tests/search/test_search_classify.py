"""Search (text, image, combined, filtered) and zero-shot classification."""

from __future__ import annotations

import numpy as np
import pytest

import vlmsearch.search.vector_search as vector_search
from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.errors import CollectionError, ModelError, QueryError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.zeroshot import class_weights, load_templates, probabilities


@pytest.fixture
def coll(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 200, sizes=[(40, 32), (64, 48), (80, 60), (33, 33)])
    return Collection.index(
        root, model=TINY, options=IngestOptions(workers=0, index="hnsw"), device="cpu"
    )


def _brute(coll, vec, allowed=None):
    ids, vecs = coll.vectors.ids, coll.vectors.vectors.astype(np.float32)
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, vecs = ids[keep], vecs[keep]
    return ids[np.argsort(-(vecs @ vec))]


def test_text_and_image_search(coll):
    hits = coll.search("a red square", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(h.score >= hits[-1].score for h in hits)
    q = coll.encoder.encode_texts(["a red square"])[0]
    assert [h.id for h in hits] == list(_brute(coll, q)[:5])
    img = coll.root / coll.table["path"][7].as_py()
    top = coll.search(image=str(img), k=1)[0]
    assert top.relpath == coll.table["path"][7].as_py()


def test_weighted_and_negative_query(coll):
    enc = coll.encoder
    a, b = enc.encode_texts(["a dog", "snow"])
    expected = (2 * a - b) / np.linalg.norm(2 * a - b)
    hits = coll.search("2:a dog", negative="snow", k=3)
    assert [h.id for h in hits] == list(_brute(coll, expected.astype(np.float32))[:3])
    with pytest.raises(QueryError, match="empty query"):
        coll.search(negative="snow")


def test_where_prefilter_returns_k_hits(coll, monkeypatch):
    # force the ANN path with a selector (not the exact-subset shortcut)
    monkeypatch.setattr(vector_search, "EXACT_SUBSET_MAX", 0)
    allowed = coll.table.filter(
        __import__("pyarrow.compute", fromlist=["x"]).equal(coll.table["width"], 33)
    )["id"].to_numpy()
    assert len(allowed) == 50
    q = coll.encoder.encode_texts(["a blue square"])[0]
    hits = coll.search_vector(q, k=10, where="width = 33")
    assert len(hits) == 10 and all(h.width == 33 for h in hits)
    assert [h.id for h in hits] == list(_brute(coll, q, allowed)[:10])
    # a 1% filter still fills k (2 rows: k is capped at what the filter allows)
    hits = coll.search_vector(q, k=10, where="id IN (3, 5)")
    assert sorted(h.id for h in hits) == [3, 5]


def test_bad_filters_and_k(coll):
    for bad, msg in [
        ("widht > 3", "not found"),
        ("width >", "invalid"),
        ("1=1; DROP TABLE metadata", "not allowed"),
        ("id IN (SELECT 1)", "subquery .* is not allowed"),
    ]:
        with pytest.raises(QueryError, match=msg):
            coll.search("x", where=bad)
    with pytest.raises(QueryError, match="at least 1"):
        coll.search("x", k=0)
    assert len(coll.search("x", k=10**9)) == 200  # huge k is capped


def test_query_model_mismatch_is_refused(coll, tiny_encoder):
    with pytest.raises(ModelError, match="model mismatch"):
        coll.check_model("ViT-B-32")
    coll.check_model(TINY)  # the same model is accepted


def test_empty_collection_error(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "broken.png").write_bytes(b"nope")
    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0))
    with pytest.raises(CollectionError, match="empty"):
        coll.search("anything")
    with pytest.raises(CollectionError, match="no collection"):
        Collection.open(tmp_path / "nowhere")


def test_zero_shot_formula(tiny_encoder):
    labels = ["cat", "dog"]
    templates = load_templates("simple")
    w = class_weights(tiny_encoder, labels, templates)
    per = tiny_encoder.encode_texts([t("cat") for t in templates])
    mean = per.mean(0)
    np.testing.assert_allclose(w[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert len(load_templates("openai")) == 80
    img = np.asarray([w[1]])
    p = probabilities(img, w)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    logits = 100 * (img @ w.T).astype(np.float64)
    ref = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-9)


def test_classify_uses_stored_vectors_and_writes_column(coll, monkeypatch):
    def no_image_encoding(*a, **k):
        raise AssertionError("classify --collection must not encode images")

    monkeypatch.setattr(type(coll.encoder), "encode_pixels", no_image_encoding)
    preds = coll.classify("red thing,blue thing,green thing", top_k=2, write_column="colour")
    assert len(preds) == 200 and all(len(p.top) == 2 for p in preds)
    reopened = Collection.open(coll.path)
    assert "colour" in reopened.table.column_names
    label = preds[0].label
    n = sum(p.label == label for p in preds)
    hits = reopened.search_vector(
        np.ones(coll.dim, np.float32) / np.sqrt(coll.dim), k=500, where=f"colour = '{label}'"
    )
    assert len(hits) == n and all(h.extra["colour"] == label for h in hits)
    # labels survive an incremental run that changes nothing
    again = Collection.index(coll.root, options=IngestOptions(workers=0))
    assert again.table["colour"].null_count == 0
