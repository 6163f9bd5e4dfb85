"""Exact inner-product search on a CUDA GPU with torch, for flat indexes when faiss has no
GPU build (issue 21): the faiss-gpu wheels are too large to bring to the lent machines,
while torch with CUDA is there for the encoders.

The flat index's vectors are copied once to the device as float16 (half the bytes to read
per scan). A search scans them in chunks: a matrix multiply per chunk, ``torch.topk`` of
the chunk, merged into the running top-k, so memory stays flat whatever the size. An
``allowed_ids`` pre-filter becomes a boolean row mask on the device and ruled-out rows
score -inf before the top-k, so a filtered search is as exact as an unfiltered one.

Exactness: float16 rounding of the stored vectors, the queries and the fp16 score moves a
unit-vector score by about 1e-3 at most, enough to reorder near-equal hits. So the scan
keeps ``k + RESCORE_MARGIN`` candidates and these are rescored in float32 against the
index's own float32 vectors (on the CPU: nq x (k + margin) rows), best k first. Scores and
ids then equal faiss's CPU exact search, unless more than ``RESCORE_MARGIN`` rows score
within ~2e-3 of a true top-k row (it would be missed) or two rows tie in float32.

:func:`wanted` says when :func:`~vlmsearch.storage.ann.faiss_store.search` comes here; torch
is not imported unless it already is or the machine shows an NVIDIA device.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.storage.ann import gpu
from vlmsearch.storage.ann.introspect import base_of

if TYPE_CHECKING:
    import torch

# Below this many rows a CPU scan reads at most 200 MB (100k x 512 floats), milliseconds
# to a few tens of them, while the GPU path first imports torch, starts CUDA and copies
# the index (seconds) and then pays launches and transfers on every search: many searches
# before it pays back, and GPU memory held for each small collection. A judgement, not
# yet measured on a GPU.
MIN_ROWS = 100_000
# The (nq x chunk) block of scores and its top-k scratch: chunks are sized to stay within
# this, so a batch of 4096 queries scans 64k-row chunks and one query the whole database.
SCORE_BUDGET_BYTES = 512 << 20
# Extra candidates kept for the float32 rescoring (see the module docstring).
RESCORE_MARGIN = 32
COPY_ROWS = 1 << 18  # rows per host-to-device copy while building (256k x 512 floats: 512 MB)
RESCORE_BYTES = 64 << 20  # candidate rows gathered per float32 rescoring step
DEVICE = "cuda"  # where wanted() searches run; tests point it at "cpu"
MISSING_SCORE = np.float32(-np.finfo(np.float32).max)  # faiss's score for a missing hit (IP)

_cache: dict[tuple[int, str], tuple[weakref.ref[Any], TorchExactSearcher | None, int]] = {}
_lock = threading.RLock()  # re-entrant: a finalizer may run while this thread holds it


def gpu_hint() -> bool:
    """Whether the machine shows an NVIDIA device, without importing torch: visible devices
    not hidden by ``CUDA_VISIBLE_DEVICES`` ("" or -1), and a device node or driver."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidia0") or os.path.isdir("/proc/driver/nvidia")


def cuda_available() -> bool:
    """torch sees a CUDA device; torch is imported here only when it already is or
    :func:`gpu_hint` says a GPU is there (importing it costs a second or two)."""
    if "torch" not in sys.modules and not gpu_hint():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def is_flat_ip(index: Any) -> bool:
    """``index`` (or its base under an id map) is an exact inner-product flat index."""
    import faiss

    base = faiss.downcast_index(base_of(index))
    return isinstance(base, faiss.IndexFlat) and base.metric_type == faiss.METRIC_INNER_PRODUCT


def wanted(index: Any) -> bool:
    """Whether a search of ``index`` should run here: an in-memory flat index of at least
    ``MIN_ROWS`` rows, ``VLMSEARCH_NO_GPU`` unset, faiss without a GPU (faiss-gpu, when
    installed, keeps serving) and torch with CUDA. Cheapest tests first: a small index
    answers False before faiss or torch is asked anything."""
    if hasattr(index, "search_with") or index.ntotal < MIN_ROWS:
        return False
    if os.environ.get("VLMSEARCH_NO_GPU") or not is_flat_ip(index):
        return False
    return not gpu.gpu_available() and cuda_available()


def search(
    index: Any, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """:meth:`TorchExactSearcher.search` on ``index``'s cached copy; None when the copy
    cannot be made (out of device memory, values beyond float16), so the caller searches on
    the CPU."""
    searcher = searcher_for(index)
    return None if searcher is None else searcher.search(queries, k, allowed_ids)


def searcher_for(index: Any) -> TorchExactSearcher | None:
    """The searcher holding ``index``'s vectors on ``DEVICE``, made on first use and kept
    while the index lives and its ``ntotal`` stays (:func:`forget` drops it on updates).
    One copy serves all threads: the searches only read it. A failed copy is remembered."""
    key = (id(index), DEVICE)
    with _lock:
        entry = _cache.get(key)
        if entry is not None and entry[0]() is index and entry[2] == index.ntotal:
            return entry[1]
        first = entry is None or entry[0]() is not index
        entry = None  # free the old copy before making the new one
        _cache.pop(key, None)
        try:
            searcher: TorchExactSearcher | None = TorchExactSearcher(index, device=DEVICE)
        except (RuntimeError, ValueError):  # out of memory, CUDA errors, float16 overflow
            searcher = None
        if first:
            weakref.finalize(index, _forget_key, key)
        _cache[key] = (weakref.ref(index), searcher, int(index.ntotal))
        return searcher


def forget(index: Any) -> None:
    """Drop ``index``'s device copies: its vectors changed (add, remove)."""
    with _lock:
        for key in [key for key in _cache if key[0] == id(index)]:
            del _cache[key]


def _forget_key(key: tuple[int, str]) -> None:
    with _lock:
        _cache.pop(key, None)


def cpu_vectors(index: Any) -> np.ndarray:
    """A float32 (ntotal, d) view of a flat index's vectors, without copying; valid until
    the index changes, so take it afresh for each use."""
    import faiss

    base = faiss.downcast_index(base_of(index))
    n, d = int(base.ntotal), int(base.d)
    if n == 0:
        return np.empty((0, d), np.float32)
    return faiss.rev_swig_ptr(base.get_xb(), n * d).reshape(n, d)


def chunk_rows_for(nq: int, element_size: int) -> int:
    """Database rows per chunk so the (nq x rows) score block fits ``SCORE_BUDGET_BYTES``."""
    return max(1, SCORE_BUDGET_BYTES // (max(1, nq) * element_size))


def scan_topk(
    xb: torch.Tensor,
    q: torch.Tensor,
    k: int,
    mask: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``q @ xb.T`` per query: (scores, rows), best first, in ``xb``'s dtype, on
    its device; rows where ``mask`` is False score -inf (they come last, and only when
    fewer than k rows are allowed). ``xb`` is scanned ``chunk_rows`` at a time (default:
    :func:`chunk_rows_for`) and each chunk's top-k merged into the running one."""
    import torch

    n, nq = int(xb.shape[0]), int(q.shape[0])
    k = min(k, n)
    if k == 0:
        return q.new_empty((nq, 0)), torch.empty((nq, 0), dtype=torch.int64, device=q.device)
    step = chunk_rows or chunk_rows_for(nq, xb.element_size())
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        s = q @ xb[lo:hi].T
        if mask is not None:
            s.masked_fill_(~mask[lo:hi], float("-inf"))
        cs, ci = torch.topk(s, min(k, hi - lo), dim=1)
        ci += lo
        if best_s is not None and best_i is not None:
            cs, ci = torch.cat((best_s, cs), 1), torch.cat((best_i, ci), 1)
            cs, pos = torch.topk(cs, min(k, cs.shape[1]), dim=1)
            ci = torch.gather(ci, 1, pos)
        best_s, best_i = cs, ci
    assert best_s is not None and best_i is not None
    return best_s, best_i


def row_mask(
    allowed_ids: np.ndarray, ntotal: int, device: Any, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """A boolean (ntotal,) mask on ``device`` of the rows whose id (``ids``, a device
    tensor; row numbers when None) is in ``allowed_ids``; ids outside the index are ignored."""
    import torch

    allowed = torch.from_numpy(np.ascontiguousarray(allowed_ids, np.int64)).to(device)
    if ids is not None:
        return torch.isin(ids, allowed)
    mask = torch.zeros(ntotal, dtype=torch.bool, device=device)
    mask[allowed[(allowed >= 0) & (allowed < ntotal)]] = True
    return mask


class TorchExactSearcher:
    """Exact inner-product search over a flat FAISS index's vectors held on a torch device.

    ``device`` and ``dtype`` (default float16) are parameters so the same algorithm runs on
    the CPU in tests. The vectors are copied once, in blocks; the searcher keeps a weak
    reference to the index for the float32 rescoring and its id map, if any."""

    def __init__(self, index: Any, device: str = "cuda", dtype: torch.dtype | None = None):
        import faiss
        import torch

        if not is_flat_ip(index):
            raise ValueError("TorchExactSearcher needs a flat inner-product index")
        self.device = torch.device(device)
        self.dtype = dtype or torch.float16
        self.ntotal, self.d = int(index.ntotal), int(index.d)
        self._index = weakref.ref(index)
        base = base_of(index)
        self.ids = faiss.vector_to_array(index.id_map) if base is not index else None
        self._ids_dev = None if self.ids is None else torch.from_numpy(self.ids).to(self.device)
        self.xb = torch.empty((self.ntotal, self.d), dtype=self.dtype, device=self.device)
        xs = cpu_vectors(index)
        for lo in range(0, self.ntotal, COPY_ROWS):
            block = self.xb[lo : lo + COPY_ROWS]
            block.copy_(torch.from_numpy(xs[lo : lo + COPY_ROWS]))
            if not bool(torch.isfinite(block).all()):  # |x| > 65504 in float16
                raise ValueError(f"the vectors do not fit {self.dtype}")

    def row_mask(self, allowed_ids: np.ndarray) -> torch.Tensor:
        """A boolean (ntotal,) mask on the device: rows whose id is in ``allowed_ids``."""
        return row_mask(allowed_ids, self.ntotal, self.device, self._ids_dev)

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like a faiss search: float32 scores and int64 ids, (nq, k), best first; missing
        hits have id -1 and score ``MISSING_SCORE``. ``allowed_ids`` pre-filters by id."""
        import torch

        index = self._index()
        if index is None or int(index.ntotal) != self.ntotal:
            raise RuntimeError("the index changed since its vectors were copied")
        q32 = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.d)
        nq = len(q32)
        out_s = np.full((nq, k), MISSING_SCORE, np.float32)
        out_i = np.full((nq, k), -1, np.int64)
        if nq == 0 or self.ntotal == 0:
            return out_s, out_i
        with torch.inference_mode():
            q = torch.from_numpy(q32).to(self.device, self.dtype)
            mask = None if allowed_ids is None else self.row_mask(allowed_ids)
            scores, rows = scan_topk(self.xb, q, k + RESCORE_MARGIN, mask)
            valid = torch.isfinite(scores).cpu().numpy()
            rows_np = rows.cpu().numpy()
        exact = self._rescore(index, q32, rows_np, valid)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(exact, order, 1)
        top_rows = np.take_along_axis(rows_np, order, 1)
        found = np.isfinite(top)
        ids = top_rows if self.ids is None else self.ids[top_rows]
        out_s[:, : top.shape[1]] = np.where(found, top, MISSING_SCORE)
        out_i[:, : top.shape[1]] = np.where(found, ids, -1)
        return out_s, out_i

    @staticmethod
    def _rescore(index: Any, q32: np.ndarray, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """float32 scores of the candidate ``rows`` from the index's own vectors; -inf where
        the scan found nothing allowed."""
        xs = cpu_vectors(index)
        exact = np.empty(rows.shape, np.float32)
        step = max(1, RESCORE_BYTES // max(1, rows.shape[1] * xs.shape[1] * 4))
        for lo in range(0, len(q32), step):
            hi = lo + step
            cand = xs[rows[lo:hi]]  # (step, candidates, d)
            exact[lo:hi] = np.matmul(cand, q32[lo:hi, :, None])[:, :, 0]
        exact[~valid] = -np.inf
        return exact
