"""FAISS indexes: choosing a type, building, updating, searching, saving.

All indexes use inner product over L2-normalised vectors (cosine similarity).
Flat and HNSW indexes are wrapped in ``IndexIDMap2`` so they answer with metadata
ids; IVF indexes store ids natively. Search parameters (nprobe, efSearch) and the
id selector travel with each call, never as attributes of a shared index.

The ``auto`` rule (sizes in vectors, ``budget`` = memory budget in bytes):

- n < 20,000: ``Flat``. Exact, and a scan of at most 20k x 512 floats (40 MB) per
  query batch is a few milliseconds.
- n < 200,000 and (4d + 8M) n fits the budget: ``HNSW32`` (efConstruction 80).
  Memory per vector is from the FAISS notes (4d + 8M).
- 4dn fits the budget: ``IVF{nlist},Flat`` with nlist = sqrt(n) rounded to a power of
  two. autofaiss uses 4 sqrt(n); on CPU, training and adding cost n * nlist * d, and at
  1M x 512 on 2 cores IVF4096 took 400 s to build against 58 s for IVF1024, which still
  answers in about 7 ms at recall@10 0.97 (benchmarks/RESULTS.md, issue 6).
- otherwise ``IVF{nlist},PQ{d/8}x8`` (d/8 bytes a vector, autofaiss's compressed family).

After a build, :func:`tune_search_params` picks efSearch / nprobe on the data itself so
that recall@10 reaches 0.95; the defaults below (efSearch 128, nprobe nlist/16) are only
for indexes built without tuning.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.storage.ann.postings import FACTORY as POSTINGS
from vlmsearch.storage.atomic import atomic_write

FLAT_MAX = 20_000
HNSW_MAX = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
TRAIN_POINTS_PER_LIST = 64
ADD_BLOCK = 65_536
# IVF and HNSW search a query in one thread; with few queries, an OpenMP team only adds
# its start-up and, on a busy machine, waits for a descheduled thread (HNSW at 30k on 2
# shared cores: p50 13 ms with 2 threads, 0.2 ms with 1; a 30k flat scan: 25-48 ms
# against 2.6-7 ms). So small batches on ANN and small flat indexes run single-threaded.
SINGLE_THREAD_MAX_NQ = 4
GPU_MAX_K = 2048  # faiss-gpu's limit on k (FAISS notes)
NAMED_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
# Tuning (tune_search_params): issue 6's recall bar; a margin for the sampling error of a
# 256-query estimate (standard error ~0.01); the values tried, smallest first.
TUNE_TARGET_RECALL = 0.95
TUNE_MARGIN = 0.02
TUNE_K = 10
TUNE_QUERIES = 256  # with d = 512, nq * d >= 128,000: FAISS takes its BLAS path (notes)
TUNE_MIN_VECTORS = 10 * TUNE_QUERIES  # smaller ANN indexes keep the default parameters
_TUNE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass
class IndexPlan:
    requested: str
    factory: str
    search_params: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    @property
    def wrapped(self) -> bool:
        """Flat/HNSW codes carry no ids of their own and need an IDMap2 wrapper."""
        return not self.factory.startswith(("IVF", "OPQ", "PCA"))

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "factory": self.factory,
            "search_params": dict(self.search_params),
            "reason": self.reason,
        }


def default_memory_budget() -> int:
    """Half of physical memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _pow2(x: float) -> int:
    return max(1, 2 ** round(math.log2(max(x, 1.0))))


def _nlist(n: int) -> int:
    # sqrt(n) rounded to a power of two (see the module docstring for why not autofaiss's
    # 4 sqrt(n)); FAISS warns below 39 training points a list.
    nlist = _pow2(math.sqrt(max(n, 1)))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return nlist


def _pq_m(d: int) -> int:
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def plan_index(requested: str, n: int, d: int, memory_budget: int | None = None) -> IndexPlan:
    """Turn ``--index`` into a FAISS factory string and per-query search defaults."""
    budget = memory_budget or default_memory_budget()
    req = (requested or "auto").strip()
    kind = req.lower()
    if kind == "auto":
        if n < FLAT_MAX:
            return IndexPlan(req, "Flat", {}, f"{n} vectors < {FLAT_MAX}: exact search")
        if n < HNSW_MAX and (4 * d + 8 * HNSW_M) * n <= budget:
            return _named("hnsw", req, n, d, f"{n} vectors < {HNSW_MAX}: HNSW graph")
        if 4 * d * n <= budget:
            return _named("ivf", req, n, d, "fp32 vectors fit the memory budget: IVF")
        return _named("ivfpq", req, n, d, "fp32 vectors exceed the memory budget: IVF-PQ")
    if kind in NAMED_KINDS:
        plan = _named(kind, req, n, d, f"--index {kind}")
    else:
        plan = IndexPlan(req, req, _default_params_for(req, n), "custom FAISS factory string")
    return _flat_until_trainable(plan, n, d)


# FAISS k-means warns below 39 training points per centroid (faiss/Clustering.cpp).
MIN_POINTS_PER_CENTROID = 39


def _flat_until_trainable(plan: IndexPlan, n: int, d: int) -> IndexPlan:
    """Exact search while a collection is too small to train the planned index well: every
    IVF list and every PQ/SQ codebook centroid needs 39 points, or FAISS prints warnings and
    the lists are noise. The requested kind stays in the manifest, so a later run that has
    enough vectors builds it."""
    need = min_training_points(plan.factory, d)
    if n >= need:
        return plan
    return IndexPlan(
        plan.requested,
        "Flat",
        {},
        f"{n} vectors are too few to train {plan.factory} (needs {need}): exact search",
    )


def min_training_points(factory: str, d: int) -> int:
    """Training vectors ``factory`` needs: 39 per IVF list and per PQ centroid; 0 when it
    needs no training (or is not a valid factory string: building it reports that)."""
    import faiss

    try:
        base = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        return 0
    if base.is_trained:
        return 0
    centroids = 1
    ivf = _ivf_of(base)
    if ivf is not None:
        centroids = max(centroids, int(ivf.nlist))
    index = faiss.downcast_index(ivf if ivf is not None else base)
    pq = getattr(index, "pq", None)
    if pq is not None:
        centroids = max(centroids, int(pq.ksub))
    return MIN_POINTS_PER_CENTROID * centroids


def check_index_request(requested: str | None, dim: int, sparse: bool) -> None:
    """Refuse an ``--index`` that cannot be built, before any image is encoded: on sparse
    (ASIF) vectors anything but ``auto``, and a factory string FAISS cannot parse for
    ``dim`` (parsed without training, so this costs milliseconds)."""
    if requested is None:
        return
    req = requested.strip()
    kind = req.lower()
    if sparse:
        if kind not in ("auto", POSTINGS):
            raise QueryError(
                f"--index {req} does not apply here: ASIF collections are searched exactly "
                "over posting lists, not with a FAISS index (drop --index)"
            )
        return
    if kind in NAMED_KINDS:
        return
    hint = "use auto, flat, hnsw, ivf, ivfpq or a FAISS factory string such as IVF256,Flat"
    if kind.startswith("idmap"):
        raise QueryError(f"--index {req}: ids are mapped by vlmsearch itself; drop IDMap ({hint})")
    import faiss

    try:
        faiss.index_factory(dim, req, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = f"invalid --index {req!r} for {dim}-d vectors: {_faiss_msg(e)}; {hint}"
        raise QueryError(msg) from None


def check_search_params(params: dict[str, int] | None, factory: str, sparse: bool) -> None:
    """Refuse per-query parameters that the collection's index would not read (nprobe is
    for IVF, efSearch for HNSW), rather than ignore them silently."""
    if not params:
        return
    names = ", ".join(sorted(params))
    if sparse:
        raise QueryError(
            f"{names} does not apply to ASIF collections: they are searched exactly over "
            "posting lists, not with a FAISS index"
        )
    used = set()
    if "IVF" in factory:
        used.add("nprobe")
    elif "HNSW" in factory:
        used.add("efSearch")
    unused = sorted(set(params) - used)
    if unused:
        raise QueryError(
            f"{', '.join(unused)} does not apply to this collection's {factory or 'exact'} "
            "index (nprobe is for IVF indexes, efSearch for HNSW)"
        )


def _named(kind: str, req: str, n: int, d: int, reason: str) -> IndexPlan:
    if kind == "flat":
        return IndexPlan(req, "Flat", {}, reason)
    if kind == "hnsw":
        return IndexPlan(req, f"HNSW{HNSW_M}", {"efSearch": HNSW_EF_SEARCH}, reason)
    nlist = _nlist(n)
    nprobe = max(1, min(nlist, nlist // 16 or 1))
    if kind == "ivf":
        return IndexPlan(req, f"IVF{nlist},Flat", {"nprobe": max(nprobe, 8)}, reason)
    return IndexPlan(req, f"IVF{nlist},PQ{_pq_m(d)}x8", {"nprobe": max(nprobe, 16)}, reason)


def _default_params_for(factory: str, n: int) -> dict[str, int]:
    if "HNSW" in factory and not factory.startswith("IVF"):
        return {"efSearch": HNSW_EF_SEARCH}
    if factory.startswith(("IVF", "OPQ", "PCA")):
        return {"nprobe": 16}
    return {}


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
        raise QueryError(f"invalid FAISS index spec {plan.factory!r}: {_faiss_msg(e)}") from None
    hnsw = _hnsw_of(base)
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
    import faiss

    ivf = _ivf_of(base)
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
    if ivf is not None and _gpu_enabled(use_gpu):
        # Train the coarse quantizer on the GPU, then keep the CPU structure.
        clus = faiss.Clustering(ivf.d, ivf.nlist)
        gpu_quant = faiss.index_cpu_to_gpu(gpu_resources(), 0, faiss.IndexFlatIP(ivf.d))
        clus.train(sample, gpu_quant)
        centroids = faiss.vector_float_to_array(clus.centroids).reshape(ivf.nlist, ivf.d)
        ivf.quantizer.add(centroids)
        ivf.is_trained = ivf.quantizer.is_trained
        if not base.is_trained:
            base.train(sample)  # PQ codebooks, if any
    else:
        base.train(sample)


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
    base = _base_of(index)
    if _hnsw_of(base) is not None:
        key, grid = "efSearch", [v for v in _TUNE_GRID if v >= 16]
    elif _ivf_of(base) is not None:
        key, grid = "nprobe", [v for v in _TUNE_GRID if v <= _ivf_of(base).nlist]
    else:
        return dict(plan.search_params), {}
    q, truth = _held_out_truth(vectors, ids, np.asarray(held_out, np.int64), k)
    tried: list[tuple[int, float]] = []
    params = dict(plan.search_params)
    for value in grid:
        params[key] = value
        _, labels = search(index, q, k, params)
        hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(labels, truth, strict=True)]
        recall = float(np.mean(hits)) / k
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


def add_vectors(index: Any, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
        )


def supports_remove(index: Any) -> bool:
    return _hnsw_of(_base_of(index)) is None


def remove_ids(index: Any, ids: np.ndarray) -> None:
    import faiss

    if len(ids):
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
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if k <= 0:
        raise QueryError("k must be at least 1")
    params = params or {}
    sel, _keep = (None, None) if allowed_ids is None else id_selector(allowed_ids)
    base = _base_of(index)
    if sel is None and _gpu_enabled(None) and k <= GPU_MAX_K:
        gpu = _gpu_copy(index)
        if gpu is not None:
            return gpu(queries, k, params)
    sp = _search_params(base, params, sel, k)
    if len(queries) <= SINGLE_THREAD_MAX_NQ and (
        _hnsw_of(base) is not None or _ivf_of(base) is not None or index.ntotal <= FLAT_MAX
    ):
        with _omp_threads(1):
            return index.search(queries, k, params=sp)
    scores, labels = index.search(queries, k, params=sp)
    return scores, labels


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
    in 2.2 ms, every list 9.6 ms (benchmarks/RESULTS.md, issue 6)."""
    import faiss

    ivf = _ivf_of(_base_of(index))
    if ivf is None or not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat):
        return None
    params = dict(params or {})
    nprobe = int(params.get("nprobe", 16))
    scale = max(1.0, math.sqrt(0.16 / max(fraction, 1e-9)))
    params["nprobe"] = min(int(ivf.nlist), math.ceil(nprobe * scale))
    return params


def _search_params(base: Any, params: dict[str, int], sel: Any, k: int) -> Any:
    import faiss

    kwargs: dict[str, Any] = {}
    if sel is not None:
        kwargs["sel"] = sel
    if _hnsw_of(base) is not None:
        # the candidate list must hold k results, or HNSW returns fewer than k
        ef = max(int(params.get("efSearch", HNSW_EF_SEARCH)), k)
        return faiss.SearchParametersHNSW(efSearch=ef, **kwargs)
    if _ivf_of(base) is not None:
        ivf = _ivf_of(base)
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
    base = _base_of(index)
    return {"class": type(base).__name__, "ntotal": int(index.ntotal), "dim": int(index.d)}


# -- helpers ------------------------------------------------------------------------------------
def _base_of(index: Any) -> Any:
    import faiss

    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.downcast_index(index.index)
    return index


def _hnsw_of(base: Any) -> Any:
    import faiss

    base = faiss.downcast_index(base)
    return base if isinstance(base, faiss.IndexHNSW) else None


def _ivf_of(base: Any) -> Any:
    import faiss

    try:
        return faiss.extract_index_ivf(base)
    except RuntimeError:
        return None


def _faiss_msg(e: Exception) -> str:
    """FAISS's C++ message without its source location: 'Error in F at file:N: Error:
    'COND' failed: TEXT' -> TEXT (or 'COND failed')."""
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e).strip(), count=1)
    m = re.match(r"Error: '(.*?)' failed(?:: (.*))?", text, re.S)
    if m:
        text = m.group(2) or f"{m.group(1)} failed"
    return text.splitlines()[0][:200] if text else type(e).__name__


# -- GPU (faiss-gpu wheel and a visible GPU; CPU otherwise) ---------------------------------------
_tls = threading.local()
_gpu_cache: dict[int, Any] = {}
_gpu_lock = threading.Lock()


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _gpu_enabled(use_gpu: bool | None) -> bool:
    if use_gpu is False or os.environ.get("VLMSEARCH_NO_GPU"):
        return False
    return gpu_available()


def gpu_resources() -> Any:
    """One StandardGpuResources per thread: GPU indexes are not thread-safe (FAISS notes)."""
    import faiss

    res = getattr(_tls, "res", None)
    if res is None:
        res = _tls.res = faiss.StandardGpuResources()
    return res


def _gpu_copy(index: Any) -> Any:
    """A per-thread GPU searcher for flat/IVF codes, translating positions to ids."""
    import faiss

    base = _base_of(index)
    if _hnsw_of(base) is not None:
        return None
    key = (id(index), threading.get_ident())
    with _gpu_lock:
        fn = _gpu_cache.get(key)
    if fn is not None:
        return fn
    co = faiss.GpuClonerOptions()
    co.useFloat16 = True
    try:
        gpu_index = faiss.index_cpu_to_gpu(gpu_resources(), 0, base, co)
    except RuntimeError:
        return None
    id_map = faiss.vector_to_array(index.id_map) if base is not index else None

    def run(queries: np.ndarray, k: int, params: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        if _ivf_of(base) is not None:
            sp = faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", 16)))
            scores, labels = gpu_index.search(queries, k, params=sp)
        else:
            scores, labels = gpu_index.search(queries, k)
        if id_map is not None:
            labels = np.where(labels >= 0, id_map[np.clip(labels, 0, None)], -1)
        return scores, labels

    with _gpu_lock:
        _gpu_cache[key] = run
    return run
