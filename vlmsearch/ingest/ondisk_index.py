"""The index stage for on-disk indexes: build one from the stored vectors shard by
shard, or extend the committed one with a delta and dead ids, compacting when the
deltas or the dead ids grow too large.

Extending never touches committed files: new vectors go into a small delta index
(sharing the trained quantizer), and ids deleted or re-encoded are recorded as dead in
the parts before it (see :mod:`vlmsearch.storage.ann.ondisk_files`). Compaction
rebuilds every list from the live vectors with the committed trained index, so it
costs an add and a merge, not a training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmsearch.ingest.options import ProgressFn
from vlmsearch.ingest.ray_index import AddBlocks
from vlmsearch.storage import integrity
from vlmsearch.storage.ann import ondisk, ondisk_files
from vlmsearch.storage.ann.ondisk_files import StagedOnDisk
from vlmsearch.storage.ann.plan import IndexPlan
from vlmsearch.storage.ann.tune import tune_on_stored
from vlmsearch.storage.store import CollectionWriter
from vlmsearch.storage.vectors import VectorTable

# A delta per index run; past this many, or once dead copies or delta rows pass these
# fractions of the base, the next run compacts (searches cost one pass per part).
MAX_DELTAS = 8
COMPACT_DEAD_FRACTION = 0.10
COMPACT_DELTA_FRACTION = 0.25
# Rows per small index added and then merged: the unit the distributed build hands to
# one machine; here it bounds the float32 copy made while adding (1M x 512: 2 GB).
SHARD_ROWS = 262_144


def finish_ondisk(
    writer: CollectionWriter,
    plan: IndexPlan,
    old: dict[str, Any],
    old_current: bool,
    dirty: set[int],
    live: VectorTable,
    progress: ProgressFn | None,
    add_blocks: AddBlocks | None = None,
) -> tuple[StagedOnDisk, dict[str, Any]]:
    """The staged on-disk index for ``live`` and its manifest entry (without files):
    a delta on top of the committed index when ``old_current`` and it is on disk with
    the same factory, else a build (reusing the committed trained index if any)."""
    directory = writer.layout.path
    ondisk_files.sweep_orphans(directory, writer.manifest)  # under the writer lock
    same = bool(old.get("ondisk")) and old.get("factory") == plan.factory
    parts = dict(old.get("parts") or {})
    if old_current and same:
        staged = _extend(writer, old, dirty, live, parts)
        if staged is not None:
            params = dict(old.get("search_params") or plan.search_params)
            return staged, {**plan.to_json(), "search_params": params, "parts": parts}
    trained = _committed_trained(writer, old) if same else None
    index = trained or _train(plan, live)
    staged = build(directory, index, live.ids, live.vectors, progress, add_blocks)
    if trained is not None:  # compaction: the committed trained index stays
        staged.keep = {"trained": old["ondisk"]["trained"]}
    else:
        staged.trained = staged.source
    # nprobe chosen on the data, as in-memory IVF indexes are (tune.py): the fixed nlist/16
    # probed 256 lists at 10M where 128 reached recall 0.974 (benchmarks/RESULTS.md)
    plan.search_params, tuning = tune_on_stored(plan, staged.merged, live.ids, live.vectors)
    parts = {"base": len(live), "deltas": 0, "max_id": int(live.ids.max(initial=-1))}
    info = {**plan.to_json(), "parts": parts}
    if tuning:
        info["tuning"] = tuning
    return staged, info


def build(
    directory: Any,
    trained: Any,
    ids: np.ndarray,
    vectors: np.ndarray,
    progress: ProgressFn | None = None,
    add_blocks: AddBlocks | None = None,
) -> StagedOnDisk:
    """Add the vectors :data:`SHARD_ROWS` at a time into small indexes (temporary files
    in ``directory``), merge them into one ``.ivfdata`` and stage the result.
    ``add_blocks`` runs the adds elsewhere (a Ray cluster: :mod:`.ray_index`)."""
    n = len(ids)
    shards = [
        (lo, min(n, lo + SHARD_ROWS), ondisk_files.temp_file(directory, "ondisk-shard"))
        for lo in range(0, n, SHARD_ROWS)
    ]
    try:
        if add_blocks is not None:
            add_blocks(trained, ids, vectors, shards, progress)
        for lo, hi, out in shards if add_blocks is None else ():
            ondisk.add_shard(trained, ids[lo:hi], vectors[lo:hi], out)
            if progress:  # done_now: the rows of this block
                progress("index", hi - lo, n)
        lists = ondisk_files.temp_file(directory, "ondisk-lists")
        merged = ondisk.merge_shards(trained, [out for _, _, out in shards], lists)
    finally:
        for _, _, p in shards:
            p.unlink(missing_ok=True)
    staged = StagedOnDisk(n, merged=merged, ivfdata_tmp=lists, dead=np.zeros((0, 2), np.int64))
    staged.source = trained
    return staged


def _extend(
    writer: CollectionWriter,
    old: dict[str, Any],
    dirty: set[int],
    live: VectorTable,
    parts: dict[str, int],
) -> StagedOnDisk | None:
    """A delta holding the ``dirty`` ids that are live, with every dirty id dead in the
    parts before it; None when that would pass a compaction threshold."""
    od = old["ondisk"]
    keep = {**od, "file": old["file"]}
    dirty_ids = np.sort(np.fromiter(dirty, np.int64, len(dirty)))
    if len(dirty_ids) == 0:
        return StagedOnDisk(len(live), keep=keep)
    deltas = list(od.get("deltas") or [])
    part = 1 + len(deltas)
    path = writer.layout.path
    dead_path = integrity.verify(path, writer.manifest, od["dead"]) if od.get("dead") else None
    # ids are never reused, so ids above every id indexed before are new: not dead anywhere
    was_indexed = dirty_ids[dirty_ids <= int(parts.get("max_id", np.iinfo(np.int64).max))]
    dead = ondisk_files.add_dead(ondisk_files.read_dead(dead_path), was_indexed, part)
    added = np.intersect1d(dirty_ids, live.ids)
    base = int(parts.get("base", 0))
    delta_rows = int(parts.get("deltas", 0)) + len(added)
    if (
        part > MAX_DELTAS
        or len(dead) > COMPACT_DEAD_FRACTION * base
        or delta_rows > COMPACT_DELTA_FRACTION * base
    ):
        return None
    trained = _committed_trained(writer, old)
    if trained is None:
        return None
    parts["deltas"] = delta_rows
    parts["max_id"] = max(int(parts.get("max_id", -1)), int(live.ids.max(initial=-1)))
    delta = ondisk.add_shard(trained, added, live.get(added)) if len(added) else None
    return StagedOnDisk(len(live), keep=keep, delta=delta, dead=dead)


def _committed_trained(writer: CollectionWriter, old: dict[str, Any]) -> Any:
    name = (old.get("ondisk") or {}).get("trained")
    if not name:
        return None
    try:
        path = writer.layout.path
        return integrity.read_checked(path, writer.manifest, name, ondisk.read_trained)
    except integrity.DamagedFileError:
        return None  # trained again from the vectors


def _train(plan: IndexPlan, live: VectorTable) -> Any:
    import faiss

    probe = faiss.index_factory(int(live.vectors.shape[1]), plan.factory)
    nlist = int(faiss.extract_index_ivf(probe).nlist)
    n_train = ondisk.training_size(plan.factory, len(live), nlist)
    rows = np.sort(np.random.default_rng(0).choice(len(live), n_train, replace=False))
    return ondisk.train_index(plan.factory, int(live.vectors.shape[1]), live.vectors[rows])
