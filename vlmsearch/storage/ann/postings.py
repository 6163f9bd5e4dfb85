"""Exact inner-product search over sparse vectors with posting lists.

ASIF relative representations keep k of N anchor similarities (k=800 of up to tens of
thousands). The index is the transposed matrix (one posting list of (image, value)
per anchor, scipy CSC); a query touches only the lists of its own non-zero anchors,
so the work is proportional to the overlap, not to N. Measured on this project's
2-core machine (benchmarks/bench_asif.py --only-scale, RESULTS.md): 100k images x 10k
anchors, k=800 -> about 16 ms per query and 610 MB, against 260 ms and 3.8 GB for a
dense FAISS flat index over the anchor space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.storage.atomic import atomic_write

FACTORY = "postings"


class PostingIndex:
    def __init__(self, ids: np.ndarray, csc: Any) -> None:
        self.ids = np.asarray(ids, np.int64)
        self.csc = csc

    @classmethod
    def build(cls, ids: np.ndarray, matrix: Any) -> PostingIndex:
        """``matrix``: (n, dim) scipy sparse rows in the order of ``ids``."""
        import scipy.sparse as sp

        csc = sp.csc_matrix(matrix, dtype=np.float32)
        csc.sort_indices()
        return cls(ids, csc)

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.csc.shape[1])

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Inner products of every stored row with the dense query ``q``."""
        q = np.asarray(q, np.float32).ravel()
        nz = np.flatnonzero(q)
        if len(nz) == 0 or self.ntotal == 0:
            return np.zeros(self.ntotal, np.float32)
        return np.asarray(self.csc[:, nz] @ q[nz], np.float32).ravel()

    def search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), exact; ``allowed`` restricts the candidate ids."""
        s = self.scores(q)
        cand = np.arange(self.ntotal)
        if allowed is not None:
            cand = cand[np.isin(self.ids, allowed)]
            s = s[cand]
        k = min(k, len(s))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        top = top[np.lexsort((self.ids[cand[top]], -s[top]))]  # ties: lower id first
        return s[top], self.ids[cand[top]]

    def write(self, path: Path) -> None:
        def save(p: Path) -> None:
            with open(p, "wb") as f:
                np.savez(
                    f,
                    ids=self.ids,
                    indptr=self.csc.indptr.astype(np.int64),
                    indices=self.csc.indices.astype(np.int32),
                    data=self.csc.data.astype(np.float32),
                    shape=np.asarray(self.csc.shape, np.int64),
                )

        atomic_write(path, save)

    @classmethod
    def read(cls, path: Path) -> PostingIndex:
        import scipy.sparse as sp

        with np.load(path) as z:
            shape = tuple(int(s) for s in z["shape"])
            csc = sp.csc_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            return cls(z["ids"], csc)
