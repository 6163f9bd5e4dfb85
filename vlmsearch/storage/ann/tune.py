"""Choosing an index's per-query search parameters on the data itself.

After a build, :func:`tune_search_params` picks efSearch (HNSW) or nprobe (IVF) so that
recall@10 against exact search reaches 0.95, with stored vectors held out of the build
as queries; :func:`build_tuned_index` does the build, the tuning and the late add.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vlmsearch.storage.ann.faiss_store import add_vectors, build_index, search
from vlmsearch.storage.ann.introspect import base_of, hnsw_of, ivf_of
from vlmsearch.storage.ann.plan import IndexPlan

# Issue 6's recall bar; a margin for the sampling error of a 256-query estimate (standard
# error ~0.01); the values tried, smallest first.
TUNE_TARGET_RECALL = 0.95
TUNE_MARGIN = 0.02
TUNE_K = 10
TUNE_QUERIES = 256  # with d = 512, nq * d >= 128,000: FAISS takes its BLAS path (notes)
TUNE_MIN_VECTORS = 10 * TUNE_QUERIES  # smaller ANN indexes keep the default parameters
_TUNE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def build_tuned_index(
    plan: IndexPlan, dim: int, ids: np.ndarray, vectors: np.ndarray, use_gpu: bool | None = None
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """Build the index, then choose its per-query nprobe / efSearch (:func:`tune_search_params`)
    with held-out stored vectors as queries: they are left out of the build, used to tune,
    and added afterwards. Returns (index, search params, tuning report)."""
    n = len(ids)
    if not ("IVF" in plan.factory or "HNSW" in plan.factory) or n < TUNE_MIN_VECTORS:
        return build_index(plan, dim, ids, vectors, use_gpu), dict(plan.search_params), {}
    rng = np.random.default_rng(0)
    held = np.sort(rng.choice(n, TUNE_QUERIES, replace=False))
    index = build_index(plan, dim, ids, vectors, use_gpu, leave_out=held)
    t = time.perf_counter()
    params, report = tune_search_params(plan, index, ids, vectors, held)
    report["seconds"] = round(time.perf_counter() - t, 2)
    add_vectors(index, np.asarray(ids)[held], np.asarray(vectors)[held])
    return index, params, report


def tune_search_params(
    plan: IndexPlan,
    index: Any,
    ids: np.ndarray,
    vectors: np.ndarray,
    held_out: np.ndarray,
    target: float = TUNE_TARGET_RECALL,
    k: int = TUNE_K,
) -> tuple[dict[str, int], dict[str, Any]]:
    """The smallest nprobe (IVF) or efSearch (HNSW) reaching recall@k >= ``target`` +
    :data:`TUNE_MARGIN` against exact search, with the rows ``held_out`` (stored vectors
    not in ``index`` yet) as queries. Returns (search params, a tuning report).

    Held out, because a stored vector used as a query is its own HNSW node, which makes
    recall look better than for a new query (efSearch tuned that way: 0.98 on the sample,
    0.90 on new queries, HNSW32 at 20k).

    autofaiss also tunes on the data itself (FAISS notes); a fixed nprobe = nlist/32 gave
    recall below 0.95 on spread-out synthetic data (benchmarks/RESULTS.md, issue 6).
    Flat indexes, and indexes too small to sample, keep ``plan.search_params``."""
    base = base_of(index)
    if hnsw_of(base) is not None:
        key, grid = "efSearch", [v for v in _TUNE_GRID if v >= 16]
    elif ivf_of(base) is not None:
        key, grid = "nprobe", [v for v in _TUNE_GRID if v <= ivf_of(base).nlist]
    else:
        return dict(plan.search_params), {}
    q, truth = _held_out_truth(vectors, ids, np.asarray(held_out, np.int64), k)
    tried: list[tuple[int, float]] = []
    params = dict(plan.search_params)
    for value in grid:
        params[key] = value
        _, labels = search(index, q, k, params)
        recall = _recall([f[f >= 0] for f in labels], truth, k)
        tried.append((value, round(recall, 4)))
        if recall >= target + TUNE_MARGIN:
            break
    report = {
        "param": key,
        "target_recall": target,
        "margin": TUNE_MARGIN,
        "k": k,
        "queries": len(q),
        "tried": tried,
    }
    return params, report


def _recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top ``k`` among the ids it found."""
    hits = [len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def _held_out_truth(
    vectors: np.ndarray, ids: np.ndarray, held: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out rows as queries, and their exact top-k ids among the other rows."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    q = vectors[held]
    # a few extra results cover the held-out rows among a query's neighbours (rare when
    # they are a small sample); a deep search is the fallback (small collections)
    for depth in (min(len(vectors), k + 16), min(len(vectors), k + len(held))):
        _, pos = faiss.knn(q, vectors, depth, metric=faiss.METRIC_INNER_PRODUCT)
        keep = ~np.isin(pos, held)
        if int(keep.sum(axis=1).min()) >= k:
            break
    truth = np.stack([row[m][:k] for row, m in zip(pos, keep, strict=True)])
    return q, np.asarray(ids, np.int64)[truth]


# Tuning on stored rows stops once two more steps of the grid (2-3x the lists) gained
# less recall than this, keeping the value before them.
PLATEAU_GAIN = 0.005

# Rows per block when the exact top k of the tuning queries is computed over stored
# vectors that stay on disk (float32 block: 128 MB at d = 512).
EXACT_BLOCK_ROWS = 65_536


def tune_on_stored(
    plan: IndexPlan,
    index: Any,
    ids: np.ndarray,
    vectors: Any,
    target: float = TUNE_TARGET_RECALL,
    k: int = TUNE_K,
) -> tuple[dict[str, int], dict[str, Any]]:
    """The smallest nprobe of an IVF ``index`` that already holds every row (an on-disk
    index, built shard by shard: nothing can be held out) reaching recall@k >= ``target``
    + :data:`TUNE_MARGIN`. Stored rows are the queries; each query's own id is dropped
    from both its exact and its ANN answer, so it does not count as a neighbour it found.
    ``vectors`` may be memory-mapped rows (``ShardRows``): the exact answer is computed
    block by block."""
    n = len(ids)
    ivf = ivf_of(base_of(index))
    if ivf is None or n < TUNE_MIN_VECTORS:
        return dict(plan.search_params), {}
    t = time.perf_counter()
    ids = np.asarray(ids, np.int64)
    pos = np.sort(np.random.default_rng(0).choice(n, TUNE_QUERIES, replace=False))
    q = np.ascontiguousarray(vectors[pos], dtype=np.float32)
    truth = _exact_top_without_self(q, vectors, ids, ids[pos], k)
    tried: list[tuple[int, float]] = []
    params = dict(plan.search_params)
    stopped = "every list"  # the bar not reached, recall still rising
    for value in [v for v in _TUNE_GRID if v <= ivf.nlist]:
        params["nprobe"] = value
        _, labels = search(index, q, k + 1, params)
        found = [
            row[(row >= 0) & (row != own)][:k] for row, own in zip(labels, ids[pos], strict=True)
        ]
        recall = _recall(found, truth, k)
        tried.append((value, round(recall, 4)))
        if recall >= target + TUNE_MARGIN:
            stopped = "target"
            break
        if len(tried) >= 3 and recall - tried[-3][1] < PLATEAU_GAIN:
            # compressed codes cap recall below the bar (PQ64 at 4M: 0.43 at any nprobe);
            # probing more lists then only costs time
            params["nprobe"] = tried[-3][0]
            stopped = "plateau"
            break
    report = {
        "param": "nprobe",
        "stopped": stopped,
        "target_recall": target,
        "margin": TUNE_MARGIN,
        "k": k,
        "queries": len(q),
        "queries_from": "stored rows, their own id excluded",
        "tried": tried,
        "seconds": round(time.perf_counter() - t, 2),
    }
    return params, report


def _exact_top_without_self(
    q: np.ndarray, vectors: Any, ids: np.ndarray, own: np.ndarray, k: int
) -> np.ndarray:
    """Each query's exact top-k ids among ``vectors``, its own id left out."""
    depth = k + 1
    best_s = np.full((len(q), depth), -np.inf, np.float32)
    best_i = np.full((len(q), depth), -1, np.int64)
    for lo in range(0, len(ids), EXACT_BLOCK_ROWS):
        block = np.asarray(vectors[lo : lo + EXACT_BLOCK_ROWS], dtype=np.float32)
        s = q @ block.T
        s[ids[lo : lo + len(block)][None, :] == own[:, None]] = -np.inf
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(ids[lo : lo + len(block)], s.shape)], 1)
        top = np.argpartition(-cand_s, depth - 1, axis=1)[:, :depth]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_i = np.take_along_axis(cand_i, top, 1)
    order = np.argsort(-best_s, axis=1)[:, :k]
    return np.take_along_axis(best_i, order, 1)
