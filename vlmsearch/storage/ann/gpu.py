"""FAISS on a GPU, when there is a faiss-gpu wheel and a visible GPU (CPU otherwise).

Indexes are always built and stored on the CPU; the GPU trains IVF coarse quantizers and
answers unfiltered flat/IVF searches from a per-thread copy. ``VLMSEARCH_NO_GPU`` turns
both off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from vlmsearch.storage.ann.introspect import base_of, hnsw_of, ivf_of

GPU_MAX_K = 2048  # faiss-gpu's limit on k (FAISS notes)

Searcher = Callable[[np.ndarray, int, dict[str, int]], tuple[np.ndarray, np.ndarray]]

_tls = threading.local()
_gpu_cache: dict[tuple[int, int], Searcher] = {}
_gpu_lock = threading.Lock()


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def gpu_enabled(use_gpu: bool | None) -> bool:
    """Whether to use the GPU: not when the caller says False or ``VLMSEARCH_NO_GPU`` is
    set; otherwise whenever one is available."""
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


def train_coarse_quantizer(base: Any, ivf: Any, sample: np.ndarray) -> None:
    """Train ``ivf``'s coarse quantizer with k-means on the GPU, keeping the CPU structure,
    then whatever else ``base`` still needs (PQ codebooks) on the CPU."""
    import faiss

    clus = faiss.Clustering(ivf.d, ivf.nlist)
    gpu_quant = faiss.index_cpu_to_gpu(gpu_resources(), 0, faiss.IndexFlatIP(ivf.d))
    clus.train(sample, gpu_quant)
    centroids = faiss.vector_float_to_array(clus.centroids).reshape(ivf.nlist, ivf.d)
    ivf.quantizer.add(centroids)
    ivf.is_trained = ivf.quantizer.is_trained
    if not base.is_trained:
        base.train(sample)


def gpu_copy(index: Any) -> Searcher | None:
    """A per-thread GPU searcher for flat/IVF codes, translating positions to ids; None for
    HNSW, or when the copy fails."""
    import faiss

    base = base_of(index)
    if hnsw_of(base) is not None:
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
        if ivf_of(base) is not None:
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
