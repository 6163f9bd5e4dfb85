"""Incremental indexing: scan -> diff -> decode -> encode -> store (checkpointed) -> index.

Work is committed every ``commit_every`` images (or ``commit_seconds``): a vector shard,
the metadata table and the manifest, in that order. A killed run therefore loses at
most one checkpoint of work; the next run sees the committed rows as unchanged files
and encodes only the rest. Ids come from the manifest's ``next_id``, so committed ids
are never reused. The FAISS index is brought up to date once, at the end of a run.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlmsearch.errors import CollectionError, ModelError
from vlmsearch.indexes import faiss_store, metadata
from vlmsearch.indexes.decode import DEFAULT_MAX_PIXELS, DecodeTask, iter_decoded
from vlmsearch.indexes.layout import FORMAT_VERSION, Layout, now_iso
from vlmsearch.indexes.postings import FACTORY as POSTINGS
from vlmsearch.indexes.postings import PostingIndex
from vlmsearch.indexes.scan import normalise_extensions, scan
from vlmsearch.indexes.store import CollectionWriter
from vlmsearch.indexes.vectors import VectorTable, shard_rows, stack, to_storage
from vlmsearch.retrieval.encoders.base import Encoder
from vlmsearch.retrieval.lazy_encoder import LazyEncoder, as_lazy

ProgressFn = Callable[[str, int, int], None]
"""progress(phase, advance, total): phase is 'scan', 'encode' or 'index'."""


@dataclass
class IngestOptions:
    index: str | None = None  # None: keep the collection's choice (auto for a new one)
    rebuild: bool = False
    batch_size: int = 64
    workers: int | None = None
    extensions: tuple[str, ...] | None = None
    include_hidden: bool = False
    commit_every: int = 1024
    commit_seconds: float = 60.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    memory_budget: int | None = None
    encoder_choice: dict[str, Any] | None = None  # why this encoder (recorded in the manifest)
    # JPEG draft-mode decoding (faster, embeddings drift slightly; recorded in the manifest).
    # None: keep the collection's setting (off for a new one).
    fast_decode: bool | None = None
    # nvJPEG decoding and tensor preprocessing on the GPU. None: on when the encoder runs
    # on CUDA and its preprocessing can be mirrored; True insists, False uses Pillow.
    gpu_decode: bool | None = None


@dataclass
class IngestReport:
    root: str
    collection: str
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    encoded: int = 0
    errors: int = 0
    error_samples: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # the whole run, model loading and query exports included
    encode_seconds: float = 0.0
    load_seconds: float = 0.0  # building the encoder (0 when nothing had to be encoded)
    index_factory: str = ""
    index_rebuilt: bool = False
    generation: int = 0
    notices: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["error_samples"] = [{"path": p, "error": e} for p, e in self.error_samples]
        d["images_per_second"] = round(self.images_per_second, 2)
        return d


def new_manifest(root: Path, encoder: Encoder, opts: IngestOptions) -> dict[str, Any]:
    spec = encoder.spec
    return {
        "format_version": FORMAT_VERSION,
        "created_at": now_iso(),
        "generation": 0,
        "root": str(root),
        "encoder": spec,
        "dim": encoder.dim,
        "metric": "inner_product (cosine on L2-normalised vectors)",
        "vectors": "sparse" if encoder.sparse_output else "dense",
        "preprocessing": {
            "model": spec.get("preprocess", {}),
            "decode": {
                "exif_transpose": True,
                "mode": "RGB",
                "alpha": "composited on white",
                "max_pixels": opts.max_pixels,
                "jpeg_draft": bool(opts.fast_decode),
                "decoders_used": [],
            },
        },
        "index": None,
        "metadata_file": None,
        "shards": [],
        "counts": {"files": 0, "ok": 0, "error": 0},
        "next_id": 0,
        "scan": {
            "extensions": list(normalise_extensions(opts.extensions)),
            "include_hidden": opts.include_hidden,
        },
        "columns": {},
        "encoder_choice": opts.encoder_choice
        or {"requested": spec.get("name"), "used": spec.get("name"), "rule": "as requested"},
    }


def check_encoder_matches(
    manifest: dict[str, Any], encoder: Encoder | LazyEncoder, what: str
) -> None:
    have, want = Encoder.identity(manifest["encoder"]), Encoder.identity(encoder.spec)
    if have != want:
        raise ModelError(
            f"model mismatch: the collection was built with "
            f"{manifest['encoder'].get('name', have)}, but {what} uses "
            f"{encoder.spec.get('name', want)}; their embeddings are not comparable "
            "(use the collection's model, or re-index with --rebuild)"
        )


def ingest(
    layout: Layout,
    root: str | Path,
    encoder: Encoder | LazyEncoder,
    opts: IngestOptions | None = None,
    progress: ProgressFn | None = None,
) -> IngestReport:
    """Bring the collection at ``layout`` up to date with the images under ``root``.

    A :class:`LazyEncoder` is built only when some file must be encoded."""
    opts = opts or IngestOptions()
    source = as_lazy(encoder)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CollectionError(f"not a directory: {root}")
    root = root.resolve()
    t0 = time.perf_counter()
    layout.prepare()
    with layout.lock():
        manifest: dict[str, Any] | None = None
        if layout.exists() and not opts.rebuild:
            manifest = layout.read_manifest()
            check_encoder_matches(manifest, source, "this index run")
            _check_root(manifest, root, layout)
            table = metadata.read_table(layout.file(manifest["metadata_file"]))
            if opts.extensions is None:
                opts.extensions = tuple(manifest["scan"]["extensions"])
        if manifest is None:
            manifest = new_manifest(root, source.get(), opts)
            table = metadata.empty_table()
            if layout.exists():
                # --rebuild: keep numbering past the old generation so no file name is
                # reused while the old manifest (still the committed state) names it.
                old = layout.read_manifest()
                manifest["generation"] = int(old.get("generation", 0))
                manifest["next_id"] = int(old.get("next_id", 0))
        manifest["root"] = str(root)
        _settle_fast_decode(manifest, opts)
        writer = CollectionWriter(layout, manifest, table)
        if layout.exists():
            writer.previous = layout.read_manifest()
        report = IngestReport(str(root), str(layout.path))
        start_data_generation = int(manifest.get("data_generation", 0))
        dirty = _run(writer, root, source, opts, report, progress)
        _finish_index(writer, opts, report, start_data_generation, dirty, progress)
        report.generation = int(writer.manifest["generation"])
        report.load_seconds = source.load_seconds
        report.seconds = time.perf_counter() - t0
        return report


def _settle_fast_decode(manifest: dict[str, Any], opts: IngestOptions) -> None:
    """Resolve ``opts.fast_decode`` against the collection: None keeps its setting; a
    different explicit choice is refused, since it would mix two preprocessings."""
    decode = manifest.setdefault("preprocessing", {}).setdefault("decode", {})
    recorded = bool(decode.get("jpeg_draft", False))
    if opts.fast_decode is None:
        opts.fast_decode = recorded
    elif opts.fast_decode != recorded:
        keep = "--fast-decode or neither flag" if recorded else "--no-fast-decode or neither flag"
        raise CollectionError(
            f"the collection was indexed {'with' if recorded else 'without'} --fast-decode "
            f"(JPEG draft mode); pass {keep} to keep its preprocessing, or re-index "
            "everything with --rebuild"
        )


def _check_root(manifest: dict[str, Any], root: Path, layout: Layout) -> None:
    old = Path(manifest.get("root", root))
    inside = layout.path.parent == root
    if old != root and not inside:
        raise CollectionError(
            f"collection {layout.path} indexes {old}, not {root}; "
            "pass another --collection or use --rebuild"
        )


def _run(
    writer: CollectionWriter,
    root: Path,
    source: LazyEncoder,
    opts: IngestOptions,
    report: IngestReport,
    progress: ProgressFn | None,
) -> set[int]:
    """Scan, diff and encode; returns the dirty ids (deleted, new or re-encoded)."""
    table = writer.table
    old_rows = {
        r["path"]: r
        for r in table.select(
            ["id", "path", "size", "mtime_ns", "content_hash", "status"]
        ).to_pylist()
    }
    scanned = list(scan(root, opts.extensions, opts.include_hidden, exclude=[writer.layout.path]))
    report.scanned = len(scanned)
    if progress:
        progress("scan", len(scanned), len(scanned))
    seen = {f.path for f in scanned}
    gone = [r["id"] for p, r in old_rows.items() if p not in seen]
    report.deleted = len(gone)
    dirty: set[int] = set(gone)

    tasks: list[DecodeTask] = []
    info: list[tuple[int, Any]] = []  # (id, ScannedFile)
    next_id = int(writer.manifest.get("next_id", 0))
    for f in scanned:
        old = old_rows.get(f.path)
        if old is None:
            fid, known = next_id, None
            next_id += 1
            report.new += 1
        elif old["size"] == f.size and old["mtime_ns"] == f.mtime_ns:
            report.unchanged += 1
            continue
        else:
            fid = old["id"]
            known = old["content_hash"] if old["status"] == "ok" else None
            report.changed += 1
        tasks.append(DecodeTask(len(tasks), str(root / f.path), known))
        info.append((fid, f))
    writer.manifest["next_id"] = next_id
    if gone:
        writer.table = metadata.drop_ids(writer.table, gone)

    if not tasks:
        if gone:
            writer.commit()
        return dirty

    encoder = source.get()  # only now: a run with nothing to encode never builds it
    workers = opts.workers if opts.workers is not None else min(4, os.cpu_count() or 1)
    pending_rows: list[dict[str, Any]] = []
    touched: dict[int, tuple[int, int]] = {}
    pending_ids: list[np.ndarray] = []
    pending_vecs: list[np.ndarray] = []
    since_commit = 0
    last_commit = time.perf_counter()
    enc_t0 = time.perf_counter()

    def flush() -> None:
        nonlocal since_commit, last_commit
        if pending_rows:
            writer.table = metadata.upsert(writer.table, metadata.rows_to_table(pending_rows))
        if touched:
            writer.table = _touch(writer.table, touched)
        shard = None
        if pending_ids:
            shard = (np.concatenate(pending_ids), stack(pending_vecs))
        writer.commit(shard=shard)
        pending_rows.clear()
        touched.clear()
        pending_ids.clear()
        pending_vecs.clear()
        since_commit = 0
        last_commit = time.perf_counter()

    batches, decoder = _decoder(tasks, encoder, opts, workers)
    used = writer.manifest["preprocessing"]["decode"].setdefault("decoders_used", [])
    if decoder not in used:
        used.append(decoder)
    for records, pixels in batches:
        vecs = encoder.encode_pixels(pixels) if pixels is not None else None
        now = dt.datetime.now(dt.timezone.utc)
        ok_ids = []
        for rec in records:
            fid, f = info[rec.index]
            if rec.unchanged:
                touched[fid] = (f.size, f.mtime_ns)
                continue
            dirty.add(fid)
            row = {
                "id": fid,
                "path": f.path,
                "size": f.size,
                "mtime_ns": f.mtime_ns,
                "content_hash": rec.content_hash,
                "width": rec.width,
                "height": rec.height,
                "format": rec.format,
                "status": "ok" if rec.error is None else "error",
                "error": rec.error,
                "indexed_at": now,
            }
            pending_rows.append(row)
            if rec.error is None:
                ok_ids.append(fid)
            else:
                report.errors += 1
                if len(report.error_samples) < 20:
                    report.error_samples.append((f.path, rec.error))
        if vecs is not None:
            pending_ids.append(np.asarray(ok_ids, np.int64))
            pending_vecs.append(to_storage(vecs, encoder.sparse_output))
            report.encoded += len(ok_ids)
        since_commit += len(records)
        if progress:
            progress("encode", len(records), len(tasks))
        if since_commit >= opts.commit_every or (
            time.perf_counter() - last_commit >= opts.commit_seconds
        ):
            flush()
    flush()
    report.encode_seconds = time.perf_counter() - enc_t0
    return dirty


def _decoder(
    tasks: list[DecodeTask], encoder: Encoder, opts: IngestOptions, workers: int
) -> tuple[Iterable[tuple[list[Any], Any]], str]:
    """The batches to encode and the decoder's name: nvJPEG on the encoder's GPU when
    possible (see ``IngestOptions.gpu_decode``), else Pillow in worker processes."""
    from vlmsearch.indexes import gpu_decode

    device = str(getattr(encoder, "device", "cpu"))
    pp = encoder.tensor_preprocess()
    gpu = opts.gpu_decode
    if gpu is None:
        gpu = (
            device.startswith("cuda")
            and pp is not None
            and gpu_decode.tensor_pipeline_supported(device)
        )
    if gpu:
        if not device.startswith("cuda") or not gpu_decode.tensor_pipeline_supported(device):
            raise CollectionError(
                f"GPU decoding needs the encoder on a CUDA device with torchvision's nvJPEG "
                f"ops; the encoder runs on {device} (drop --gpu-decode)"
            )
        if pp is None:
            raise CollectionError(
                f"GPU decoding cannot mirror the preprocessing of {encoder.display_name} "
                "(drop --gpu-decode)"
            )
        pipe = gpu_decode.TensorImagePipeline(
            tasks, pp, opts.batch_size, device, opts.max_pixels, read_threads=max(2, workers)
        )
        return pipe, "nvjpeg"
    draft = None
    if opts.fast_decode:
        if pp is None:
            raise CollectionError(
                f"--fast-decode needs to know the input size of {encoder.display_name}, "
                "which does not say it (index without --fast-decode)"
            )
        draft = (pp.size, pp.size)
    transform = encoder.image_transform()
    batches = iter_decoded(tasks, transform, opts.batch_size, workers, opts.max_pixels, draft)
    return batches, "pillow-draft" if draft else "pillow"


def _touch(table: pa.Table, touched: dict[int, tuple[int, int]]) -> pa.Table:
    """Update size/mtime of files whose bytes did not change (no re-encoding)."""
    ids = table["id"].to_numpy()
    size = table["size"].to_numpy().copy()
    mtime = table["mtime_ns"].to_numpy().copy()
    pos = {int(i): n for n, i in enumerate(ids)}
    for fid, (s, m) in touched.items():
        if fid in pos:
            size[pos[fid]], mtime[pos[fid]] = s, m
    table = table.set_column(table.column_names.index("size"), "size", pa.array(size))
    return table.set_column(table.column_names.index("mtime_ns"), "mtime_ns", pa.array(mtime))


def _finish_index(
    writer: CollectionWriter,
    opts: IngestOptions,
    report: IngestReport,
    start_data_generation: int,
    dirty: set[int],
    progress: ProgressFn | None,
) -> None:
    """Bring the FAISS index up to date: incremental where possible, else rebuilt."""
    m = writer.manifest
    old = m.get("index") or {}
    if _index_untouched(writer, opts, start_data_generation):
        # no data change and no new index request: skip reading every vector shard
        report.index_factory = str(old.get("factory", ""))
        return
    dim = int(m["dim"])
    ok_ids = metadata.filter_ids(writer.table, None)
    sparse = m.get("vectors") == "sparse"
    live = VectorTable.load(writer.layout.vectors_dir, m.get("shards", []), dim, ok_ids, sparse)
    if sparse:
        _finish_postings(writer, opts, report, start_data_generation, live, progress)
        return
    requested = (m.get("index") or {}).get("requested") if opts.index is None else opts.index
    requested = requested or "auto"
    plan = faiss_store.plan_index(requested, len(live), dim, opts.memory_budget)
    old = m.get("index") or {}
    report.index_factory = plan.factory
    old_current = (
        int(old.get("generation", -1)) >= start_data_generation
        and old.get("factory") == plan.factory
        and old.get("file")
        and writer.layout.file(old["file"]).is_file()
        and not opts.rebuild
    )
    if old_current and int(m.get("data_generation", 0)) == start_data_generation:
        return  # nothing changed since the index was written
    index = None
    if old_current:
        index = faiss_store.read_index(writer.layout.file(old["file"]))
        dirty_ids = np.fromiter(dirty, np.int64, len(dirty))
        if len(dirty_ids) and not faiss_store.supports_remove(index):
            index = None  # HNSW cannot remove; rebuild from the stored vectors
        else:
            faiss_store.remove_ids(index, dirty_ids)
            added = np.intersect1d(dirty_ids, live.ids)
            faiss_store.add_vectors(index, added, live.get(added))
    tuning: dict[str, Any] = {}
    if index is None:
        report.index_rebuilt = True
        if progress:
            progress("index", 0, len(live))
        vectors = live.vectors.astype(np.float32)
        index, plan.search_params, tuning = faiss_store.build_tuned_index(
            plan, dim, live.ids, vectors
        )
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
    shard = (live.ids, live.vectors) if compact else None
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
        and writer.layout.file(old["file"]).is_file()
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
