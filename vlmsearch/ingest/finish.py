"""The index stage of a run: bring the FAISS index (or, for sparse ASIF vectors, the
posting lists) up to date with the committed vectors, in place where possible, else
rebuilt. Also how ``vlmsearch check --repair`` rebuilds a damaged index."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmsearch.ingest.ondisk_index import finish_ondisk
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.ingest.ray_index import ray_block_adder
from vlmsearch.storage import integrity
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.plan import plan_index
from vlmsearch.storage.ann.postings import FACTORY as POSTINGS
from vlmsearch.storage.ann.postings import PostingIndex
from vlmsearch.storage.ann.tune import build_tuned_index
from vlmsearch.storage.store import CollectionWriter
from vlmsearch.storage.vectors import VectorTable, shard_rows


def finish_index(
    writer: CollectionWriter,
    opts: IngestOptions,
    report: IngestReport,
    start_data_generation: int,
    dirty: set[int],
    progress: ProgressFn | None,
) -> None:
    """Bring the index up to date with the committed vectors (``dirty``: the ids deleted,
    added or re-encoded since ``start_data_generation``): incremental where possible,
    else rebuilt."""
    m = writer.manifest
    if _index_untouched(writer, opts, start_data_generation):
        # no data change and no new index request: skip reading every vector shard
        report.index_factory = str((m.get("index") or {}).get("factory", ""))
        return
    # dense rows stay in the memory-mapped shards until an index build asks for them:
    # an on-disk build streams them block by block (storage/vectors.py ShardRows)
    live = _live_vectors(writer)
    if m.get("vectors") == "sparse":
        _finish_postings(writer, opts, report, start_data_generation, live, progress)
    else:
        _finish_faiss(writer, opts, report, start_data_generation, dirty, live, progress)


def _live_vectors(writer: CollectionWriter) -> VectorTable:
    """The vectors of the rows that decoded, from shards whose checksums were verified."""
    m = writer.manifest
    dim = int(m["dim"])
    ok_ids = writer.ok_ids()
    sparse = m.get("vectors") == "sparse"
    for shard in m.get("shards", []):
        integrity.verify_all(writer.layout.path, m, integrity.shard_files(shard, sparse))
    return VectorTable.load(
        writer.layout.vectors_dir, m.get("shards", []), dim, ok_ids, sparse, lazy=not sparse
    )


def _finish_faiss(
    writer: CollectionWriter,
    opts: IngestOptions,
    report: IngestReport,
    start_data_generation: int,
    dirty: set[int],
    live: VectorTable,
    progress: ProgressFn | None,
) -> None:
    """Dense collections: update the FAISS index in place when it is current and of the
    planned kind, else build (and tune) it again."""
    m = writer.manifest
    dim = int(m["dim"])
    old = m.get("index") or {}
    requested = old.get("requested") if opts.index is None else opts.index
    plan = plan_index(requested or "auto", len(live), dim, opts.memory_budget)
    report.index_factory = plan.factory
    old_current = (
        int(old.get("generation", -1)) >= start_data_generation
        and old.get("factory") == plan.factory
        and old.get("file")
        and not opts.rebuild
        and _index_intact(writer, old["file"], report)
    )
    if old_current and int(m.get("data_generation", 0)) == start_data_generation:
        return  # nothing changed since the index was written
    if plan.ondisk:
        adder = ray_block_adder(opts.ray) if getattr(opts, "ray", None) else None
        staged, info = finish_ondisk(
            writer, plan, old, bool(old_current), dirty, live, progress, adder
        )
        report.index_rebuilt = staged.merged is not None
        _commit_index(writer, live, staged, {**info, "ntotal": staged.ntotal, "dim": dim})
        return
    live = VectorTable(live.ids, np.asarray(live.vectors[:]))  # in memory: read them all once
    index = _updated_in_place(writer, old["file"], dirty, live) if old_current else None
    tuning: dict[str, Any] = {}
    if index is None:
        report.index_rebuilt = True
        if progress:
            progress("index", 0, len(live))
        vectors = live.vectors.astype(np.float32)
        index, plan.search_params, tuning = build_tuned_index(plan, dim, live.ids, vectors)
        del vectors
    elif old.get("search_params"):
        # updated in place: the parameters tuned when it was built still apply
        plan.search_params = dict(old["search_params"])
        tuning = old.get("tuning") or {}
    if progress:
        progress("index", len(live), len(live))
    info = {**plan.to_json(), "ntotal": int(index.ntotal), "dim": dim}
    if tuning:
        info["tuning"] = tuning
    _commit_index(writer, live, index, info)


def _updated_in_place(
    writer: CollectionWriter, name: str, dirty: set[int], live: VectorTable
) -> Any:
    """The stored index with the ``dirty`` ids removed and their live vectors added; None
    when it cannot remove ids (HNSW), so that it is rebuilt from the stored vectors."""
    m = writer.manifest
    index = integrity.read_checked(writer.layout.path, m, name, faiss_store.read_index)
    dirty_ids = np.fromiter(dirty, np.int64, len(dirty))
    if len(dirty_ids) and not faiss_store.supports_remove(index):
        return None
    faiss_store.remove_ids(index, dirty_ids)
    added = np.intersect1d(dirty_ids, live.ids)
    faiss_store.add_vectors(index, added, live.get(added))
    return index


def _index_intact(writer: CollectionWriter, name: str, report: IngestReport) -> bool:
    """Whether the stored index can be kept; a damaged one is rebuilt (it is derived from
    the vectors), and the report says so."""
    try:
        integrity.verify(writer.layout.path, writer.manifest, name)
        return True
    except integrity.MissingFileError:
        return False
    except integrity.DamagedFileError as e:
        report.notices.append(f"the index {name} was damaged ({e.problem}); rebuilt it")
        return False


def _index_untouched(
    writer: CollectionWriter, opts: IngestOptions, start_data_generation: int
) -> bool:
    """The run changed no data and asks for nothing new, and the stored index is current."""
    m = writer.manifest
    old = m.get("index") or {}
    return bool(
        not opts.rebuild
        and opts.index is None
        and opts.memory_budget is None
        and int(m.get("data_generation", 0)) == start_data_generation
        and int(old.get("generation", -1)) >= start_data_generation
        and old.get("file")
        and writer.layout.file(old["file"]).is_file()
    )


def _commit_index(
    writer: CollectionWriter, live: VectorTable, index: Any, info: dict[str, Any]
) -> None:
    # Compact shards once dead rows (replaced or deleted vectors) outweigh live ones.
    m = writer.manifest
    stored = sum(shard_rows(writer.layout.vectors_dir, s) for s in m.get("shards", []))
    compact = stored > 2 * len(live) + 1024
    shard = (live.ids, np.asarray(live.vectors[:])) if compact else None
    writer.commit(
        shard=shard, index=index, index_info=info, replace_shards=compact, data_changed=False
    )


def _finish_postings(
    writer: CollectionWriter,
    opts: IngestOptions,
    report: IngestReport,
    start_data_generation: int,
    live: VectorTable,
    progress: ProgressFn | None,
) -> None:
    """Sparse collections: rebuild the posting lists (a transpose, seconds at 100k)."""
    m = writer.manifest
    old = m.get("index") or {}
    report.index_factory = POSTINGS
    if (
        not opts.rebuild
        and int(m.get("data_generation", 0)) == start_data_generation
        and int(old.get("generation", -1)) >= start_data_generation
        and old.get("file")
        and _index_intact(writer, old["file"], report)
    ):
        return
    report.index_rebuilt = True
    if progress:
        progress("index", 0, len(live))
    index = PostingIndex.build(live.ids, live.vectors)
    if progress:
        progress("index", len(live), len(live))
    info = {
        "requested": "postings",
        "factory": POSTINGS,
        "search_params": {},
        "reason": "sparse vectors: exact search over per-anchor posting lists",
        "ntotal": index.ntotal,
        "dim": int(m["dim"]),
    }
    _commit_index(writer, live, index, info)
