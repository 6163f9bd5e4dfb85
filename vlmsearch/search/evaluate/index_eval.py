"""How well the ANN index finds what an exact scan finds: stored vectors sampled as
queries (seeded), recall@k of the configured index against brute force over the same
vectors, and the index's latency per query."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import QueryError
from vlmsearch.results import ProgressFn
from vlmsearch.search.evaluate.report import EvalReport, Miss, worst
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.plan import check_search_params
from vlmsearch.storage.reader import CollectionReader
from vlmsearch.storage.snapshot import on_one_commit

DEFAULT_QUERIES = 100
DEFAULT_K = 10
TIE = 1e-5  # scores this close to the exact k-th tie with it


def check_index_args(queries: int, k: int) -> None:
    if queries < 1:
        raise QueryError(f"--queries must be at least 1 (got {queries})")
    if k < 1:
        raise QueryError(f"-k must be at least 1 (got {k})")


@on_one_commit
def evaluate_index(
    reader: CollectionReader,
    queries: int = DEFAULT_QUERIES,
    k: int = DEFAULT_K,
    seed: int = 0,
    params: dict[str, int] | None = None,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Recall@k and p50/p95 latency of the index; each query's own vector is left out of
    both result lists (it would be an easy, uninformative hit)."""
    check_index_args(queries, k)
    n = reader.require_vectors()
    info = reader.manifest.get("index") or {}
    check_search_params(params, info.get("factory", ""), reader.sparse)
    params = {**info.get("search_params", {}), **(params or {})}
    table = reader.vectors
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(table.ids, min(queries, len(table)), replace=False))
    index = reader.faiss_index
    k = min(k, len(table) - 1)
    if k < 1:
        raise QueryError("the collection needs at least two images to measure its index")
    recalls, times, misses = [], [], []
    stored = table.get(table.ids)
    for qid in sample.tolist():
        q = table.dense(np.asarray([qid]))[0]
        t0 = time.perf_counter()
        got = _ann(reader, index, q, k + 1, params)
        times.append(time.perf_counter() - t0)
        recall = _recall(stored, table, q, qid, got, k)
        recalls.append(recall)
        if recall < 1:
            missed = int(round((1 - recall) * k))
            misses.append(Miss(qid, "", f"{missed} of the exact top {k} missed", 1 + missed))
        if progress is not None:
            progress("index", 1, len(sample))
    report = EvalReport("index", _metrics(info, reader, n, sample, k, recalls, times, params))
    shown = worst(misses)
    rows = reader.rows(np.asarray([m.id for m in shown], np.int64))
    for m in shown:
        m.path = str(reader.root / names.row_path(rows[m.id])) if m.id in rows else ""
    report.misses = {"queries with the lowest recall": shown}
    if reader.sparse:
        report.notes.append(
            "ASIF collections search posting lists exactly: recall is 1 by construction, "
            "latency is the figure to watch"
        )
    if reader.index_is_stale:
        report.notes.append("the stored index is behind the data: an exact index was measured")
    return report


def _ann(
    reader: CollectionReader, index: Any, q: np.ndarray, k: int, params: dict[str, int]
) -> list[int]:
    if reader.sparse:
        return index.search(q, k)[1].tolist()
    _, ids = faiss_store.search(index, q[None, :], k, params)
    return [i for i in ids[0].tolist() if i >= 0]


def _recall(stored: Any, table: Any, q: np.ndarray, qid: int, got: list[int], k: int) -> float:
    """Share of the exact top ``k`` (the query itself left out of both lists) that the
    index found; a found image that ties with the exact k-th counts as found."""
    scores = np.asarray(stored @ q, np.float32).ravel()
    scores[table.positions(np.asarray([qid]))[0]] = -np.inf
    kth = np.partition(-scores, k - 1)[k - 1] if k < len(scores) else -scores.min()
    found = [i for i in got if i != qid][:k]
    if not found:
        return 0.0
    found_scores = scores[table.positions(np.sort(np.asarray(found, np.int64)))]
    return min(k, int((found_scores >= -kth - TIE).sum())) / k


def _metrics(
    info: dict[str, Any],
    reader: CollectionReader,
    n: int,
    sample: np.ndarray,
    k: int,
    recalls: list[float],
    times: list[float],
    params: dict[str, int],
) -> dict[str, Any]:
    ms = np.asarray(times) * 1000
    return {
        "index": info.get("factory") or ("postings" if reader.sparse else "flat"),
        "search_params": params,
        "vectors": n,
        "queries": len(sample),
        "k": k,
        f"recall@{k}": float(np.mean(recalls)),
        "min_recall": float(np.min(recalls)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
    }
