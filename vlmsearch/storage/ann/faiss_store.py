"""A FAISS index's life: building, updating, searching, saving.

All indexes use inner product over L2-normalised vectors (cosine similarity).
Flat and HNSW indexes are wrapped in ``IndexIDMap2`` so they answer with metadata
ids; IVF indexes store ids natively. Search parameters (nprobe, efSearch) and the
id selector travel with each call, never as attributes of a shared index.

Which index to build is :mod:`~vlmsearch.storage.ann.plan`'s job; its search parameters,
:mod:`~vlmsearch.storage.ann.tune`'s; GPU copies, :mod:`~vlmsearch.storage.ann.gpu`'s (faiss-gpu)
and :mod:`~vlmsearch.storage.ann.torch_exact`'s (large flat indexes, torch on CUDA).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.storage.ann import gpu, torch_exact
from vlmsearch.storage.ann.introspect import base_of, faiss_message, hnsw_of, ivf_of
from vlmsearch.storage.ann.plan import FLAT_MAX, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, IndexPlan
from vlmsearch.storage.atomic import atomic_write

TRAIN_POINTS_PER_LIST = 64
ADD_BLOCK = 65_536
# IVF and HNSW search a query in one thread; with few queries, an OpenMP team only adds
# its start-up and, on a busy machine, waits for a descheduled thread (HNSW at 30k on 2
# shared cores: p50 13 ms with 2 threads, 0.2 ms with 1; a 30k flat scan: 25-48 ms
# against 2.6-7 ms). So small batches on ANN and small flat indexes run single-threaded.
SINGLE_THREAD_MAX_NQ = 4


def build_index(
    plan: IndexPlan,
    dim: int,
    ids: np.ndarray,
    vectors: np.ndarray,
    use_gpu: bool | None = None,
    leave_out: np.ndarray | None = None,
) -> Any:
    """Build a CPU index over ``vectors`` (float32, normalised) labelled with ``ids``;
    rows at the sorted positions ``leave_out`` are not added (but may be trained on)."""
    import faiss

    try:
        base = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise QueryError(f"invalid FAISS index spec {plan.factory!r}: {faiss_message(e)}") from None
    hnsw = hnsw_of(base)
    if hnsw is not None:
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index = faiss.IndexIDMap2(base) if plan.wrapped else base
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not base.is_trained:
        if len(vectors) == 0:
            return index  # trained on the first add
        _train(base, vectors, use_gpu)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if leave_out is None or len(leave_out) == 0:
        if len(vectors):
            index.add_with_ids(vectors, ids)
        return index
    # block by block, so that at most one block is copied at a time (and few add calls:
    # each starts an OpenMP team, slow on a busy machine)
    keep = np.ones(len(vectors), dtype=bool)
    keep[np.asarray(leave_out, np.int64)] = False
    for lo in range(0, len(vectors), ADD_BLOCK):
        m = keep[lo : lo + ADD_BLOCK]
        index.add_with_ids(vectors[lo : lo + ADD_BLOCK][m], ids[lo : lo + ADD_BLOCK][m])
    return index


def _train(base: Any, vectors: np.ndarray, use_gpu: bool | None) -> None:

    ivf = ivf_of(base)
    nlist = ivf.nlist if ivf is not None else 1
    # FAISS k-means samples at most 256 points per centroid and warns below 39; 64 keeps
    # training a fraction of the add cost (IVF1024 on 1M x 512: 11-41 s on 2 cores).
    n_train = min(len(vectors), TRAIN_POINTS_PER_LIST * nlist)
    rng = np.random.default_rng(0)
    sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
    if ivf is not None and len(sample) < ivf.nlist:
        raise QueryError(
            f"IVF with nlist={ivf.nlist} needs at least {ivf.nlist} vectors, have {len(sample)}; "
            "use --index flat or a smaller nlist"
        )
    if ivf is not None and gpu.gpu_enabled(use_gpu):
        gpu.train_coarse_quantizer(base, ivf, sample)
    else:
        base.train(sample)


def add_vectors(index: Any, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        torch_exact.forget(index)
        index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
        )


def supports_remove(index: Any) -> bool:
    return hnsw_of(base_of(index)) is None


def remove_ids(index: Any, ids: np.ndarray) -> None:
    import faiss

    if len(ids):
        torch_exact.forget(index)
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))


def search(
    index: Any,
    queries: np.ndarray,
    k: int,
    params: dict[str, int] | None = None,
    allowed_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k search; ``allowed_ids`` restricts it (pre-filtering with an id selector).

    Returns (scores, ids) of shape (nq, k); missing results have id -1.

    Where faiss has a GPU, unfiltered flat/IVF searches run on it; where it has none but
    torch sees one, large flat indexes are searched there, filtered or not
    (:func:`torch_exact.wanted`); everything else on the CPU.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if k <= 0:
        raise QueryError("k must be at least 1")
    params = params or {}
    if hasattr(index, "search_with"):  # an on-disk index of several parts (ondisk.py)
        return index.search_with(queries, k, params, allowed_ids)
    if allowed_ids is None and gpu.gpu_enabled(None) and k <= gpu.GPU_MAX_K:
        searcher = gpu.gpu_copy(index)
        if searcher is not None:
            return searcher(queries, k, params)
    if torch_exact.wanted(index):
        found = torch_exact.search(index, queries, k, allowed_ids)
        if found is not None:
            return found
    sel, _keep = (None, None) if allowed_ids is None else id_selector(allowed_ids)
    base = base_of(index)
    sp = _search_params(base, params, sel, k)
    if len(queries) <= SINGLE_THREAD_MAX_NQ and (
        hnsw_of(base) is not None or ivf_of(base) is not None or index.ntotal <= FLAT_MAX
    ):
        with _omp_threads(1):
            return index.search(queries, k, params=sp)
    scores, labels = index.search(queries, k, params=sp)
    return scores, labels


def single_threaded() -> contextlib.AbstractContextManager[None]:
    """FAISS calls made by this thread in the block run on one OpenMP thread."""
    return _omp_threads(1)


@contextlib.contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    """OpenMP threads for FAISS calls made by this thread (the setting is per thread)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def id_selector(ids: np.ndarray) -> tuple[Any, np.ndarray | None]:
    """A FAISS selector admitting ``ids``, and the array it reads (keep it alive while the
    selector is used).

    A bitmap over [0, max id] when that is at most 128 bits an id (ids are dense row
    numbers, so nearly always): building it is a numpy pass, and a test is one bit,
    while ``IDSelectorBatch`` fills a hash set, ~16+ bytes and a hash per id."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return faiss.IDSelectorBatch(ids), None
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < 128 * len(ids):
        bits = np.zeros(hi + 1, dtype=bool)
        bits[ids] = True
        bitmap = np.packbits(bits, bitorder="little")  # faiss reads bit (id & 7) of byte id >> 3
        return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap
    return faiss.IDSelectorBatch(ids), None


def filtered_params(
    index: Any, params: dict[str, int] | None, fraction: float
) -> dict[str, int] | None:
    """Search parameters for an IVF-Flat ``index`` under a filter keeping ``fraction`` of
    the rows; None for other indexes.

    The k nearest allowed rows lie farther out than the k nearest rows, so nprobe grows
    by sqrt(0.16 / fraction) (never below the tuned value, at most nlist). With an id
    selector, distances are computed for allowed ids only, so extra lists are cheap: at
    1M x 512 and a 1% filter, 2x the tuned nprobe gave recall@10 0.998, 4x gave 1.000
    in 2.2 ms, every list 9.6 ms (benchmarks/RESULTS.md, issue 6). On-disk indexes of
    any IVF kind are widened too: the exact alternative would read every stored vector."""
    import faiss

    ivf = ivf_of(base_of(index))
    on_disk = hasattr(index, "search_with")  # never scan stored vectors: they are not in RAM
    if ivf is None or not (on_disk or isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)):
        return None
    params = dict(params or {})
    nprobe = int(params.get("nprobe", 16))
    scale = max(1.0, math.sqrt(0.16 / max(fraction, 1e-9)))
    params["nprobe"] = min(int(ivf.nlist), math.ceil(nprobe * scale))
    return params


def search_params_for(base: Any, params: dict[str, int], sel: Any, k: int) -> Any:
    """FAISS search parameters for ``base`` from vlmsearch's ``params`` and a selector."""
    return _search_params(base, params, sel, k)


def _search_params(base: Any, params: dict[str, int], sel: Any, k: int) -> Any:
    import faiss

    kwargs: dict[str, Any] = {}
    if sel is not None:
        kwargs["sel"] = sel
    if hnsw_of(base) is not None:
        # the candidate list must hold k results, or HNSW returns fewer than k
        ef = max(int(params.get("efSearch", HNSW_EF_SEARCH)), k)
        return faiss.SearchParametersHNSW(efSearch=ef, **kwargs)
    if ivf_of(base) is not None:
        ivf = ivf_of(base)
        nprobe = int(params.get("nprobe", 16))
        return faiss.SearchParametersIVF(nprobe=max(1, min(nprobe, ivf.nlist)), **kwargs)
    return faiss.SearchParameters(**kwargs) if kwargs else None


def write_index(index: Any, path: Path) -> None:
    import faiss

    atomic_write(path, lambda p: faiss.write_index(index, str(p)))


def read_index(path: Path) -> Any:
    import faiss

    return faiss.read_index(str(path))


def describe(index: Any) -> dict[str, Any]:
    base = base_of(index)
    return {"class": type(base).__name__, "ntotal": int(index.ntotal), "dim": int(index.d)}
