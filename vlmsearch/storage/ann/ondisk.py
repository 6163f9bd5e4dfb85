"""IVF indexes whose inverted lists live on disk, memory-mapped when opened.

Building follows autofaiss's distributed recipe, in four functions that each can run on
another machine (only files pass between them):

1. :func:`train_index` trains the empty index (coarse quantizer, PQ/OPQ codebooks) on a
   sample; :func:`write_trained` saves it (a few MB).
2. :func:`add_shard` adds one shard's vectors to a copy of the trained index and writes
   that small IVF index: run it once per vector shard, anywhere.
3. :func:`merge_shards` concatenates the shards' lists into one ``.ivfdata`` file with
   FAISS's ``merge_ondisk`` (``OnDiskInvertedLists``, the lists are never all in RAM)
   and returns the merged index, whose header names that file.
4. :func:`open_index` reads the header with ``IO_FLAG_ONDISK_SAME_DIR |
   IO_FLAG_READ_ONLY``: ``OnDiskInvertedLists`` memory-maps the ``.ivfdata`` next to it
   (read-only), so opening a 10M collection reads the quantizer and the list offsets,
   not the lists. (``IO_FLAG_MMAP`` is not added: on faiss 1.15.1 a header read with it
   segfaults in the first search, and it would only map the header, which is small.)

A committed on-disk index is immutable. New vectors go into small *delta* IVF indexes
sharing the trained quantizer, and vectors deleted or re-encoded since a part was written
are *dead* in that part: each part is searched with an id selector excluding its dead
ids, and the parts' top-k lists are merged (:class:`OnDiskIndex`). Compaction builds
the lists again from the stored vectors with the same trained index
(see :mod:`vlmsearch.ingest.ondisk_index`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.storage.ann.faiss_store import id_selector, search_params_for, single_threaded
from vlmsearch.storage.ann.introspect import ivf_of
from vlmsearch.storage.atomic import atomic_path, fsync_dir

ADD_BLOCK = 65_536
# k-means samples at most 256 points a centroid; 64 a list keeps training a fraction of
# the add cost (the in-memory builder's rule, faiss_store.TRAIN_POINTS_PER_LIST); PQ and
# OPQ codebooks need 256 centroids x 39 points each.
TRAIN_POINTS_PER_LIST = 64
MIN_TRAIN = 256 * 39


def training_size(factory: str, n: int, nlist: int) -> int:
    """How many vectors :func:`train_index` should get for ``nlist`` lists."""
    want = TRAIN_POINTS_PER_LIST * nlist
    if "PQ" in factory.replace("SQ", ""):
        want = max(want, MIN_TRAIN)
    return min(n, want)


def train_index(factory: str, dim: int, sample: np.ndarray) -> Any:
    """An empty, trained IVF index (inner product) for ``factory``; ``sample`` is float32
    or float16, L2-normalised."""
    import faiss

    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = ivf_of(index)
    if ivf is None:
        raise ValueError(f"{factory} is not an IVF index: only IVF lists can live on disk")
    ivf = faiss.downcast_index(ivf)
    if hasattr(ivf, "do_polysemous_training"):
        # polysemous codes serve Hamming pre-filtering, which vlmsearch does not use, and
        # their training (permuting centroids) took 2/3 of IVF-PQ's (200 of 300 s at
        # PQ128 on 2 cores)
        ivf.do_polysemous_training = False
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def write_trained(index: Any, path: Path) -> None:
    """Save a trained, empty index (what each :func:`add_shard` starts from)."""
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_trained(path: Path) -> Any:
    import faiss

    return faiss.read_index(str(path))


def add_shard(trained: Any, ids: np.ndarray, vectors: np.ndarray, out: Path | None = None) -> Any:
    """A copy of ``trained`` holding ``vectors`` labelled ``ids`` (float16 vectors are
    converted a block at a time), written to ``out`` when given. This is the per-shard
    step: it needs only the trained index and the shard."""
    import faiss

    index = faiss.clone_index(trained)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    for lo in range(0, len(ids), ADD_BLOCK):
        block = np.ascontiguousarray(vectors[lo : lo + ADD_BLOCK], dtype=np.float32)
        index.add_with_ids(block, ids[lo : lo + ADD_BLOCK])
    if out is not None:
        with atomic_path(out) as tmp:
            faiss.write_index(index, str(tmp))
    return index


def merge_shards(trained: Any, shard_files: Iterable[Path], ivfdata: Path) -> Any:
    """The trained index holding every shard's vectors, its lists written to ``ivfdata``
    (FAISS's ``merge_ondisk``: the shards are memory-mapped and the output is an
    ``OnDiskInvertedLists``, so RAM holds neither). The file is fsynced; the returned
    index still maps it, and its header is written by :func:`write_header`."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.clone_index(trained)
    merge_ondisk(index, [str(p) for p in shard_files], str(ivfdata))
    _fsync(ivfdata)
    return index


def write_header(index: Any, header: Path, ivfdata_name: str) -> None:
    """Write the index file of a merged index, naming its lists file ``ivfdata_name``
    (a base name: readers resolve it next to ``header``). The lists may have been
    written under a temporary name; only the name recorded here counts."""
    import faiss

    invlists = faiss.downcast_InvertedLists(ivf_of(index).invlists)
    invlists.filename = ivfdata_name
    with atomic_path(header) as tmp:
        faiss.write_index(index, str(tmp))


def open_index(header: Path) -> Any:
    """The index at ``header`` with its ``.ivfdata`` (in the same folder) memory-mapped
    read-only: pages are read when a search touches them, and the kernel may drop them
    again."""
    import faiss

    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(str(header), flags)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    fsync_dir(path.parent)


class OnDiskIndex:
    """An on-disk index opened for search: the merged base, the deltas added since, and
    for each part the ids whose copy there is dead (deleted or re-encoded later).

    It answers like a FAISS index for :func:`vlmsearch.storage.ann.faiss_store.search`
    (which calls :meth:`search_with`); ``base_index`` is what the rest of the code
    introspects (its IVF kind and nlist)."""

    def __init__(self, parts: list[Any], dead: list[np.ndarray], ntotal: int | None = None) -> None:
        if len(parts) != len(dead):
            raise ValueError("one dead-id array per part")
        self.parts = parts
        self.dead = [np.unique(np.asarray(x, np.int64)) for x in dead]
        self.base_index = parts[0]
        self.d = int(parts[0].d)
        # the live count, when known (a dead id need not be in its part: exact otherwise
        # only if every dead id was)
        stored = sum(int(p.ntotal) for p in parts) - sum(len(x) for x in self.dead)
        self.ntotal = stored if ntotal is None else int(ntotal)

    def search_with(
        self,
        queries: np.ndarray,
        k: int,
        params: dict[str, int] | None,
        allowed_ids: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every part, each searched with the same parameters and a selector
        that admits ``allowed_ids`` (all when None) minus the part's dead ids."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = None if allowed_ids is None else id_selector(allowed_ids)
        scores, labels = [], []
        for part, dead in zip(self.parts, self.dead, strict=True):
            if part.ntotal == 0:
                continue
            keep: list[Any] = [allowed]  # selectors must outlive the search
            sel = allowed[0] if allowed is not None else None
            if len(dead):
                not_dead = faiss.IDSelectorNot(id_selector(dead)[0])
                keep.append(not_dead)
                sel = not_dead if sel is None else faiss.IDSelectorAnd(sel, not_dead)
                keep.append(sel)
            sp = search_params_for(part, params or {}, sel, k)
            with _threads_for(len(queries)):
                d, i = part.search(queries, k, params=sp)
            scores.append(d)
            labels.append(i)
        if not scores:
            nq = len(queries)
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        return _merge_top_k(scores, labels, k)


def _merge_top_k(
    scores: list[np.ndarray], labels: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    if len(scores) == 1:
        return scores[0], labels[0]
    d = np.concatenate(scores, axis=1)
    i = np.concatenate(labels, axis=1)
    d = np.where(i < 0, -np.inf, d)
    order = np.argsort(-d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


@contextlib.contextmanager
def _threads_for(nq: int) -> Iterator[None]:
    with single_threaded() if nq <= 4 else contextlib.nullcontext():
        yield
