"""Embeddings of a metadata text column (captions), stored like the image vectors.

``search --text-column caption`` compares the query with what the captions say. The
captions are embedded once, with the collection's own encoder, and kept in one file
per column (``textvec-<generation>-<column tag>.npz``): ids, a 64-bit digest of each
row's text, and the vectors (float16 rows, or a float16 CSR matrix for sparse ASIF
collections). A later search re-embeds only rows whose text is new or changed, and
drops rows that are gone, so the file follows the column without a full pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.storage.atomic import atomic_write
from vlmsearch.storage.vectors import is_sparse, stack, to_storage

EMBED_BATCH = 256
SCORE_CHUNK = 65_536


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """A 64-bit digest per text (blake2b), to tell which rows changed."""
    out = np.empty(len(texts), np.uint64)
    for i, t in enumerate(texts):
        digest = hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def file_name(generation: int, column: str) -> str:
    tag = hashlib.sha1(column.encode("utf-8")).hexdigest()[:8]
    return f"textvec-{generation:06d}-{tag}.npz"


@dataclass
class TextVectors:
    """Sorted ids, their text digests, and one vector per id (dense float16 or CSR)."""

    ids: np.ndarray
    digests: np.ndarray
    vectors: Any

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dim: int, sparse: bool) -> TextVectors:
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.uint64), to_storage(np.zeros((0, dim)), sparse)
        )

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Inner product of every stored vector with ``query`` (float32)."""
        q = np.asarray(query, np.float32).ravel()
        if is_sparse(self.vectors):
            return np.asarray(self.vectors @ q, np.float32).ravel()
        out = np.empty(len(self.ids), np.float32)
        for lo in range(0, len(out), SCORE_CHUNK):  # float32 copies of one chunk at a time
            out[lo : lo + SCORE_CHUNK] = self.vectors[lo : lo + SCORE_CHUNK].astype(np.float32) @ q
        return out

    def take(self, positions: np.ndarray) -> TextVectors:
        return TextVectors(self.ids[positions], self.digests[positions], self.vectors[positions])

    # -- files --------------------------------------------------------------------------------
    def write(self, path: Path) -> None:
        def save(p: Path) -> None:
            arrays: dict[str, np.ndarray] = {"ids": self.ids, "digests": self.digests}
            if is_sparse(self.vectors):
                csr = self.vectors.tocsr()
                arrays.update(
                    indptr=csr.indptr.astype(np.int64),
                    indices=csr.indices.astype(np.int32),
                    data=csr.data.astype(np.float16),
                    shape=np.asarray(csr.shape, np.int64),
                )
            else:
                arrays["vectors"] = self.vectors.astype(np.float16, copy=False)
            with open(p, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, save)

    @classmethod
    def read(cls, path: Path) -> TextVectors:
        with np.load(path) as z:
            if "vectors" in z:
                vectors: Any = z["vectors"]
            else:
                import scipy.sparse as sp

                shape = tuple(int(s) for s in z["shape"])
                vectors = sp.csr_matrix(
                    (z["data"].astype(np.float32), z["indices"], z["indptr"]), shape=shape
                )
            return cls(z["ids"].astype(np.int64), z["digests"].astype(np.uint64), vectors)


def refresh(
    stored: TextVectors,
    ids: np.ndarray,
    texts: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    sparse: bool,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[TextVectors, int]:
    """Bring ``stored`` in line with the column's current ``(ids, texts)``.

    Rows whose digest matches are kept; new or changed rows are embedded with ``encode``
    (in batches); rows absent from ``ids`` are dropped. Returns the new table and the
    number of rows embedded."""
    order = np.argsort(ids, kind="stable")
    ids = np.asarray(ids, np.int64)[order]
    texts = [texts[i] for i in order.tolist()]
    digests = text_digests(texts)
    pos = np.searchsorted(stored.ids, ids)
    pos = np.clip(pos, 0, max(len(stored) - 1, 0))
    same = (
        (stored.ids[pos] == ids) & (stored.digests[pos] == digests)
        if len(stored)
        else np.zeros(len(ids), bool)
    )
    todo = np.flatnonzero(~same)
    kept = stored.take(pos[same])
    if len(todo) == 0:
        return TextVectors(ids, digests, kept.vectors), 0
    parts = []
    for start in range(0, len(todo), EMBED_BATCH):
        batch = todo[start : start + EMBED_BATCH]
        parts.append(to_storage(encode([texts[i] for i in batch.tolist()]), sparse))
        if progress:
            progress("embed", len(batch), len(todo))
    new = stack(parts)
    # interleave kept and new rows back into id order
    all_ids = np.concatenate([ids[same], ids[todo]])
    back = np.argsort(all_ids, kind="stable")
    vectors = stack([kept.vectors, new])[back]
    return TextVectors(ids, digests, vectors), len(todo)
