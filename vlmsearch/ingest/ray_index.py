"""The on-disk index build's add step on a Ray cluster (``--ray`` with an on-disk index).

The driver trains the index on a sample, as on one machine; then every block of
:data:`~vlmsearch.ingest.ondisk_index.SHARD_ROWS` rows is added to a copy of the trained
index by a Ray task, which writes the small index into the collection folder (so a
cluster needs it on a shared filesystem, as for encoding). The driver merges the files
on disk (:func:`vlmsearch.storage.ann.ondisk.merge_shards`). A task that fails is retried
by Ray; a killed driver leaves only temporary files, which the next run sweeps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.ingest.options import ProgressFn

Block = tuple[int, int, Path]  # rows [lo, hi) and the file their small index goes to
AddBlocks = Callable[[Any, np.ndarray, Any, list[Block], ProgressFn | None], None]


def _add_block(trained_bytes: Any, ids: np.ndarray, vectors: np.ndarray, out: str) -> int:
    """On a worker: the trained index with this block added, written to ``out``."""
    import faiss

    from vlmsearch.storage.ann import ondisk

    trained = faiss.deserialize_index(np.asarray(trained_bytes))
    ondisk.add_shard(trained, ids, vectors, Path(out))
    return len(ids)


def ray_block_adder(address: str | None) -> AddBlocks:
    """An ``add_blocks`` for :func:`vlmsearch.ingest.ondisk_index.build` that runs the
    blocks as Ray tasks on the cluster at ``address`` ("auto": a local runtime)."""

    def add_blocks(
        trained: Any,
        ids: np.ndarray,
        vectors: Any,
        blocks: list[Block],
        progress: ProgressFn | None,
    ) -> None:
        import faiss

        from vlmsearch.ingest.ray_encode import connect, require_ray

        ray = require_ray()
        started = connect(ray, address)
        try:
            task = ray.remote(max_retries=3, num_cpus=1)(_add_block)
            trained_ref = ray.put(faiss.serialize_index(trained))
            # blocks are read from the stored vectors only when submitted: at most two per
            # core in flight, so the driver never holds the whole collection
            in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
            todo, pending = list(blocks), []
            while todo or pending:
                while todo and len(pending) < in_flight:
                    lo, hi, out = todo.pop(0)
                    vecs = np.ascontiguousarray(vectors[lo:hi])
                    pending.append(task.remote(trained_ref, ids[lo:hi], vecs, str(out)))
                done, pending = ray.wait(pending, num_returns=1)
                rows = ray.get(done[0])
                if progress:
                    progress("index", rows, len(ids))
        finally:
            if started:
                ray.shutdown()

    return add_blocks
