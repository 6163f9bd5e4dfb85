"""FAISS store: exactness, ANN recall, filtered search, the auto rule."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsearch.errors import QueryError
from vlmsearch.storage.ann import faiss_store as fs
from vlmsearch.storage.ann import tune
from vlmsearch.storage.ann.introspect import ivf_of
from vlmsearch.storage.ann.plan import plan_index


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Random vectors around random centres (embedding-like structure), normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 1), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = _clustered(20_000, 64)
    ids = np.arange(len(x), dtype=np.int64) * 7 + 3  # ids are not positions
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 100, replace=False)] + 0.05 * rng.standard_normal((100, 64))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    exact = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    return x, ids, q, exact


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=False)])
    )


def test_flat_equals_numpy_brute_force(data):
    x, ids, q, _ = data
    plan = plan_index("flat", len(x), 64)
    index = fs.build_index(plan, 64, ids, x)
    scores, labels = fs.search(index, q, 10, plan.search_params)
    ref = q @ x.T
    order = np.argsort(-ref, axis=1)[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, 1), atol=1e-5)
    np.testing.assert_array_equal(labels, ids[order])


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_at_10(data, kind):
    x, ids, q, exact = data
    plan = plan_index(kind, len(x), 64)
    index = fs.build_index(plan, 64, ids, x)
    _, labels = fs.search(index, q, 10, plan.search_params)
    assert _recall(labels, exact) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_selector_restricts_results(data, kind):
    x, ids, q, _ = data
    plan = plan_index(kind, len(x), 64)
    index = fs.build_index(plan, 64, ids, x)
    allowed = ids[::3]
    _, labels = fs.search(index, q[:5], 10, plan.search_params, allowed_ids=allowed)
    found = labels[labels >= 0]
    assert len(found) > 0 and np.isin(found, allowed).all()


def test_search_params_are_per_call(data):
    x, ids, q, _ = data
    plan = plan_index("ivf", len(x), 64)
    index = fs.build_index(plan, 64, ids, x)
    ivf = ivf_of(index)
    before = ivf.nprobe
    fs.search(index, q[:2], 10, {"nprobe": 64})
    assert ivf.nprobe == before  # nothing was set on the shared index


def test_remove_and_add_keep_ids(data):
    x, ids, _, _ = data
    plan = plan_index("flat", 100, 64)
    index = fs.build_index(plan, 64, ids[:100], x[:100])
    fs.remove_ids(index, ids[:10])
    assert index.ntotal == 90
    fs.add_vectors(index, ids[:10], x[:10])
    _, labels = fs.search(index, x[:1], 1)
    assert labels[0, 0] == ids[0]


def test_auto_rule_and_bad_factory():
    assert plan_index("auto", 1_000, 512).factory == "Flat"
    assert plan_index("auto", 50_000, 512).factory.startswith("HNSW")
    big = plan_index("auto", 1_000_000, 512, memory_budget=8 << 30)
    assert big.factory.startswith("IVF") and big.factory.endswith(",Flat")
    tiny_budget = plan_index("auto", 1_000_000, 512, memory_budget=1 << 28)
    assert "PQ" in tiny_budget.factory
    with pytest.raises(QueryError, match="invalid FAISS index spec"):
        fs.build_index(plan_index("NotAFactory", 10, 8), 8, np.arange(2), np.ones((2, 8)))
    with pytest.raises(QueryError):
        fs.search(
            fs.build_index(plan_index("flat", 2, 8), 8, np.arange(2), np.ones((2, 8))),
            np.ones((1, 8)),
            0,
        )


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_tuned_params_reach_recall_and_leave_index_alone(data, kind):
    x, ids, q, exact = data
    plan = plan_index(kind, len(x), 64)
    index, params, report = tune.build_tuned_index(plan, 64, ids, x)
    assert index.ntotal == len(x)  # the held-out rows were added after tuning
    ivf = ivf_of(index)
    key = "nprobe" if kind == "ivf" else "efSearch"
    assert report["param"] == key and params[key] == report["tried"][-1][0]
    assert report["tried"][-1][1] >= tune.TUNE_TARGET_RECALL + tune.TUNE_MARGIN
    _, labels = fs.search(index, q, 10, params)
    assert _recall(labels, exact) >= 0.95  # other queries than the tuning ones
    if ivf is not None:
        assert ivf.nprobe == 1  # faiss's default: tuned values travel per call only
    flat = plan_index("flat", len(x), 64)
    assert tune.build_tuned_index(flat, 64, ids, x)[1:] == ({}, {})
    small = tune.build_tuned_index(plan, 64, ids[:1000], x[:1000])
    assert small[1] == plan.search_params and small[2] == {}  # too few rows to tune


@pytest.mark.parametrize("spacing", [1, 10_000])  # dense ids: bitmap; sparse ids: hash set
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_filtered_search_returns_k_allowed_ids(data, kind, spacing):
    x, _, q, _ = data
    ids = np.arange(len(x), dtype=np.int64) * spacing + 5
    plan = plan_index(kind, len(x), 64)
    index = fs.build_index(plan, 64, ids, x)
    sel, bitmap = fs.id_selector(ids[::50])
    assert (bitmap is not None) == (spacing == 1)
    allowed = ids[::50]  # 2% of the rows
    params = {"nprobe": ivf_of(index).nlist} if kind == "ivf" else {}
    _, labels = fs.search(index, q[:5], 10, params, allowed_ids=allowed)
    assert (labels >= 0).all() and np.isin(labels, allowed).all()  # k hits, all allowed
    ref = ids[::50][np.argsort(-(q[:5] @ x[::50].T), axis=1)[:, :10]]
    np.testing.assert_array_equal(labels, ref)  # exact under a full probe / flat scan
