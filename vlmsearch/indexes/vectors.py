"""Embedding vectors on disk: float16 shards aligned with metadata ids.

The shards are the source of truth (an index can be rebuilt from them with another
FAISS type, without re-encoding). A shard is two ``.npy`` files, ``<name>.ids.npy``
(int64) and ``<name>.f16.npy`` (float16, n x dim). A re-encoded file appends its new
vector to a later shard; when shards are read, the last occurrence of an id wins and
ids absent from the metadata are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlmsearch.indexes.atomic import atomic_write


def shard_files(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.ids.npy", directory / f"{name}.f16.npy"


def write_shard(directory: Path, name: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids) != len(vectors):
        raise ValueError("ids and vectors differ in length")
    ids_path, vec_path = shard_files(directory, name)
    atomic_write(vec_path, lambda p: _save(p, vectors.astype(np.float16, copy=False)))
    atomic_write(ids_path, lambda p: _save(p, ids.astype(np.int64, copy=False)))


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def shard_rows(directory: Path, name: str) -> int:
    return int(np.load(shard_files(directory, name)[0], mmap_mode="r").shape[0])


class VectorTable:
    """The live vectors of a collection: sorted ids and their float16 rows."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids = ids
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def load(
        cls, directory: Path, shards: Sequence[str], dim: int, live_ids: np.ndarray | None = None
    ) -> VectorTable:
        if not shards:
            return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float16))
        all_ids = []
        all_vecs = []
        for name in shards:
            ids_path, vec_path = shard_files(directory, name)
            all_ids.append(np.load(ids_path))
            all_vecs.append(np.load(vec_path, mmap_mode="r"))
        ids = np.concatenate(all_ids)
        # last occurrence wins: unique over the reversed order gives the last position
        rev_unique, rev_pos = np.unique(ids[::-1], return_index=True)
        pos = len(ids) - 1 - rev_pos
        if live_ids is not None:
            keep = np.isin(rev_unique, live_ids)
            rev_unique, pos = rev_unique[keep], pos[keep]
        offsets = np.cumsum([0] + [len(a) for a in all_ids])
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

    def get(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors[self.positions(np.asarray(ids, np.int64))].astype(np.float32)
