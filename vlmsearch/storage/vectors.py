"""Embedding vectors on disk: float16 shards aligned with metadata ids.

The shards are the source of truth (an index can be rebuilt from them with another
index type, without re-encoding). A dense shard is two ``.npy`` files,
``<name>.ids.npy`` (int64) and ``<name>.f16.npy`` (float16, n x dim). Encoders with
sparse output (ASIF relative representations: a few hundred non-zeros out of
thousands of anchors) write ``<name>.sparse.npz`` instead: a CSR matrix with float16
values and int32 column indices. A re-encoded file appends its new vector to a later
shard; when shards are read, the last occurrence of an id wins and ids absent from
the metadata are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.storage.atomic import atomic_write
from vlmsearch.storage.integrity import reading


def shard_files(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.ids.npy", directory / f"{name}.f16.npy"


def sparse_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.sparse.npz"


def is_sparse(x: Any) -> bool:
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def write_shard(directory: Path, name: str, ids: np.ndarray, vectors: Any) -> None:
    if len(ids) != vectors.shape[0]:
        raise ValueError("ids and vectors differ in length")
    ids_path, vec_path = shard_files(directory, name)
    if is_sparse(vectors):
        csr = vectors.tocsr()
        atomic_write(sparse_file(directory, name), lambda p: _save_csr(p, csr))
    else:
        atomic_write(vec_path, lambda p: _save(p, vectors.astype(np.float16, copy=False)))
    # the ids file goes last: a shard without it is never named by a manifest anyway
    atomic_write(ids_path, lambda p: _save(p, ids.astype(np.int64, copy=False)))


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _save_csr(path: Path, csr: Any) -> None:
    with open(path, "wb") as f:
        np.savez(
            f,
            indptr=csr.indptr.astype(np.int64),
            indices=csr.indices.astype(np.int32),
            data=csr.data.astype(np.float16),
            shape=np.asarray(csr.shape, np.int64),
        )


def _load_csr(path: Path) -> Any:
    import scipy.sparse as sp

    with np.load(path) as z:
        shape = tuple(int(s) for s in z["shape"])
        return sp.csr_matrix((z["data"].astype(np.float32), z["indices"], z["indptr"]), shape=shape)


def read_shard(directory: Path, name: str, sparse: bool = False) -> tuple[np.ndarray, Any]:
    """One shard's ids and rows as written (float16 rows, or a float32 CSR matrix): for
    shards written elsewhere and adopted by a commit (``vlmsearch index --ray``)."""
    ids_path, vec_path = shard_files(directory, name)
    ids = np.load(ids_path)
    vecs = _load_csr(sparse_file(directory, name)) if sparse else np.load(vec_path)
    if vecs.shape[0] != len(ids):
        raise ValueError(f"shard {name}: {len(ids)} ids but {vecs.shape[0]} rows")
    return ids, vecs


def remove_shard(directory: Path, name: str) -> None:
    """Delete one shard's files (those that exist)."""
    for path in (*shard_files(directory, name), sparse_file(directory, name)):
        path.unlink(missing_ok=True)


def shard_rows(directory: Path, name: str) -> int:
    return int(np.load(shard_files(directory, name)[0], mmap_mode="r").shape[0])


def to_storage(vectors: np.ndarray, sparse: bool) -> Any:
    """A batch of float32 vectors as stored: float16 rows, or a float16-valued CSR matrix
    (entries that underflow float16 are exactly zero and are not stored)."""
    v16 = vectors.astype(np.float16)
    if not sparse:
        return v16
    import scipy.sparse as sp

    return sp.csr_matrix(v16.astype(np.float32))


def stack(parts: Sequence[Any]) -> Any:
    if parts and is_sparse(parts[0]):
        import scipy.sparse as sp

        return sp.vstack(list(parts), format="csr")
    return np.concatenate(list(parts))


class VectorTable:
    """The live vectors of a collection: sorted ids and their rows (float16 array, or a
    float32 CSR matrix for sparse collections). ``get(ids) @ q`` works for both."""

    def __init__(self, ids: np.ndarray, vectors: Any) -> None:
        self.ids = ids
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sparse(self) -> bool:
        return is_sparse(self.vectors)

    @classmethod
    def load(
        cls,
        directory: Path,
        shards: Sequence[str],
        dim: int,
        live_ids: np.ndarray | None = None,
        sparse: bool = False,
        lazy: bool = False,
    ) -> VectorTable:
        """The live rows of ``shards``. ``lazy`` (dense only): rows stay in the
        memory-mapped shards and are gathered when indexed (:class:`ShardRows`), so a
        10M x 512 collection is not copied into 10 GB of RAM to be streamed into an index."""
        if not shards:
            if sparse:
                import scipy.sparse as sp

                return cls(np.zeros(0, np.int64), sp.csr_matrix((0, dim), dtype=np.float32))
            return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float16))
        all_ids = []
        all_vecs = []
        for name in shards:
            ids_path, vec_path = shard_files(directory, name)
            with reading(ids_path, directory.parent):
                shard_ids = np.load(ids_path)
                if shard_ids.ndim != 1 or shard_ids.dtype != np.int64:
                    raise ValueError(f"ids of shape {shard_ids.shape} and type {shard_ids.dtype}")
            data_path = sparse_file(directory, name) if sparse else vec_path
            with reading(data_path, directory.parent):
                vecs = _load_csr(data_path) if sparse else np.load(vec_path, mmap_mode="r")
                if vecs.shape != (len(shard_ids), dim):  # a mismatch would mix up rows
                    raise ValueError(f"shape {vecs.shape}, expected ({len(shard_ids)}, {dim})")
            all_ids.append(shard_ids)
            all_vecs.append(vecs)
        ids = np.concatenate(all_ids)
        # last occurrence wins: unique over the reversed order gives the last position
        rev_unique, rev_pos = np.unique(ids[::-1], return_index=True)
        pos = len(ids) - 1 - rev_pos
        if live_ids is not None:
            keep = np.isin(rev_unique, live_ids)
            rev_unique, pos = rev_unique[keep], pos[keep]
        if sparse:
            return cls(rev_unique.astype(np.int64), stack(all_vecs)[pos])
        offsets = np.cumsum([0] + [len(a) for a in all_ids])
        if lazy:
            return cls(rev_unique.astype(np.int64), ShardRows(all_vecs, offsets, pos, dim))
        out = np.empty((len(pos), dim), np.float16)
        for s, vecs in enumerate(all_vecs):
            lo, hi = offsets[s], offsets[s + 1]
            sel = (pos >= lo) & (pos < hi)
            if sel.any():
                out[sel] = vecs[pos[sel] - lo]
        return cls(rev_unique.astype(np.int64), out)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids`` (which must all be present)."""
        pos = np.searchsorted(self.ids, ids)
        pos = np.clip(pos, 0, max(len(self.ids) - 1, 0))
        if len(ids) and (len(self.ids) == 0 or not np.array_equal(self.ids[pos], ids)):
            raise KeyError("some ids have no stored vector")
        return pos

    def get(self, ids: np.ndarray) -> Any:
        """Rows of ``ids``: float32 array, or float32 CSR matrix for sparse tables."""
        rows = self.vectors[self.positions(np.asarray(ids, np.int64))]
        return rows if self.sparse else rows.astype(np.float32)

    def dense(self, ids: np.ndarray) -> np.ndarray:
        rows = self.get(ids)
        return rows.toarray() if self.sparse else rows


class ShardRows:
    """Row ``i`` of the live vectors, read from the memory-mapped shard that holds it:
    ``rows[lo:hi]`` and ``rows[positions]`` gather float16 arrays on demand, so memory
    holds only the rows asked for (the page cache holds the rest, and can drop it)."""

    def __init__(
        self, shards: list[np.ndarray], offsets: np.ndarray, pos: np.ndarray, dim: int
    ) -> None:
        self._shards = shards
        self._offsets = np.asarray(offsets, np.int64)
        self._pos = np.asarray(pos, np.int64)  # live row -> position in the concatenation
        self.shape = (len(self._pos), dim)
        self.dtype = np.dtype(np.float16)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) or not isinstance(key, slice | np.ndarray | list):
            raise TypeError("ShardRows takes a slice or an array of row positions")
        pos = self._pos[key]
        out = np.empty((len(pos), self.shape[1]), np.float16)
        shard = np.searchsorted(self._offsets, pos, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._shards[s][pos[sel] - self._offsets[s]]
        return out
