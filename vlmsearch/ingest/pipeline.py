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
import pyarrow.compute as pc

from vlmsearch import names
from vlmsearch.errors import CollectionError, ModelError
from vlmsearch.imaging.decode import DEFAULT_MAX_PIXELS, DecodeTask, iter_decoded
from vlmsearch.imaging.scan import ScanError, is_under, normalise_extensions, scan
from vlmsearch.ingest.touched import same_bytes
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.lazy_encoder import LazyEncoder, as_lazy
from vlmsearch.storage import integrity, metadata
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.plan import check_index_request, plan_index
from vlmsearch.storage.ann.postings import FACTORY as POSTINGS
from vlmsearch.storage.ann.postings import PostingIndex
from vlmsearch.storage.ann.tune import build_tuned_index
from vlmsearch.storage.layout import FORMAT_VERSION, Layout, now_iso
from vlmsearch.storage.store import CollectionWriter
from vlmsearch.storage.vectors import VectorTable, shard_rows, stack, to_storage

ProgressFn = Callable[[str, int, int], None]
"""progress(phase, advance, total): phase is 'scan', 'encode' or 'index'."""


@dataclass
class IngestOptions:
    index: str | None = None  # None: keep the collection's choice (auto for a new one)
    rebuild: bool = False
    repair: bool = False  # first repair a damaged collection (see vlmsearch.ingest.repair)
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
        return names.readable_data(d)


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
                "high_bit_depth": "scaled by the mode's range (16-bit /257, float 0..1 *255)",
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
    names.require_utf8_folder(layout.path)
    t0 = time.perf_counter()
    _check_index_option(layout, encoder, opts)
    layout.prepare()
    notices: list[str] = []
    with layout.lock():
        repairs: list[str] = []
        if opts.repair and not opts.rebuild and layout.exists():
            from vlmsearch.ingest.repair import repair

            repairs = repair(layout, progress, locked=True).repaired
        manifest: dict[str, Any] | None = None
        if layout.exists() and not opts.rebuild:
            manifest = layout.read_manifest()
            check_encoder_matches(manifest, source, "this index run")
            _check_root(manifest, root, layout)
            name = manifest.get("metadata_file")
            table = (
                integrity.read_checked(layout.path, manifest, name, metadata.read_table)
                if name
                else metadata.empty_table()
            )
            notices += repair_next_id(manifest, table, name)
            if opts.extensions is None:
                opts.extensions = tuple(manifest["scan"]["extensions"])
        previous = None
        if manifest is None:
            manifest = new_manifest(root, source.get(), opts)
            table = metadata.empty_table()
            if layout.exists():
                # --rebuild: keep numbering past the old generation so no file name is
                # reused while the old manifest (still the committed state) names it;
                # an unreadable old manifest is no obstacle: number past every file.
                previous = readable_manifest(layout)
                old = previous or {}
                manifest["generation"] = max(
                    int(old.get("generation", 0)), integrity.highest_generation(layout.path)
                )
                manifest["next_id"] = int(old.get("next_id", 0))
            else:
                # an empty commit first: from now on the folder is a collection, and every
                # file written into it is one a manifest will name
                layout.write_manifest(manifest)
        else:
            previous = layout.read_manifest()
        manifest["root"] = str(root)
        _settle_fast_decode(manifest, opts)
        writer = CollectionWriter(layout, manifest, table)
        writer.previous = previous
        report = IngestReport(str(root), str(layout.path), notices=repairs + notices)
        start_data_generation = int(manifest.get("data_generation", 0))
        dirty = _run(writer, root, source, opts, report, progress)
        _finish_index(writer, opts, report, start_data_generation, dirty, progress)
        report.generation = int(writer.manifest["generation"])
        report.load_seconds = source.load_seconds
        report.seconds = time.perf_counter() - t0
        return report


def _check_index_option(
    layout: Layout, encoder: Encoder | LazyEncoder, opts: IngestOptions
) -> None:
    """A bad ``--index`` fails before anything is created or encoded; the collection's own
    dimension and vector kind when it has them (the encoder must match them anyway)."""
    if opts.index is None:
        return
    if layout.exists() and not opts.rebuild:
        m = layout.read_manifest()
        dim, sparse = int(m["dim"]), m.get("vectors") == "sparse"
    else:  # a new collection: its encoder was chosen (so built) for this run already
        enc = as_lazy(encoder).get()
        dim, sparse = enc.dim, enc.sparse_output
    check_index_request(opts.index, dim, sparse)


def readable_manifest(layout: Layout) -> dict[str, Any] | None:
    """The committed manifest, or None where it is damaged or of another format."""
    try:
        return layout.read_manifest()
    except CollectionError:
        return None


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


def repair_next_id(manifest: dict[str, Any], table: pa.Table, source: str | None) -> list[str]:
    """Ids are handed out from ``next_id``; one not above every id in the metadata (a
    hand-edited or damaged manifest) would give new files existing ids and evict their
    rows. It is raised past the largest id -- nothing is lost -- and said in a notice."""
    if not table.num_rows:
        return []
    largest = int(pc.max(table["id"]).as_py())
    next_id = manifest.get("next_id")
    if isinstance(next_id, int) and not isinstance(next_id, bool) and next_id > largest:
        return []
    manifest["next_id"] = largest + 1
    return [
        f"the manifest's next_id ({next_id!r}) was not above the largest id in {source} "
        f"({largest}); new files are numbered from {largest + 1}"
    ]


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
    old_rows = dict(
        zip(
            names.column_paths(table),  # OS form: the scan's names compare equal
            table.select(["id", "size", "mtime_ns", "content_hash", "status"]).to_pylist(),
            strict=True,
        )
    )
    problems: list[ScanError] = []
    scanned = list(
        scan(
            root,
            opts.extensions,
            opts.include_hidden,
            exclude=[writer.layout.path],
            on_error=problems.append,
        )
    )
    for p in problems:
        if p.path == ".":
            raise CollectionError(f"{root}: {p.message}; the collection was left as it was")
        report.errors += 1
        if len(report.error_samples) < 20:
            report.error_samples.append((p.path, p.message))
    report.scanned = len(scanned)
    if progress:
        progress("scan", len(scanned), len(scanned))
    seen = {f.path for f in scanned}
    # rows under a folder that could not be listed are unknown this time, not deleted:
    # they keep their ids, vectors and labels
    unknown = {p.path for p in problems}
    gone = [r["id"] for p, r in old_rows.items() if p not in seen and not is_under(p, unknown)]
    report.deleted = len(gone)
    dirty: set[int] = set(gone)

    tasks: list[DecodeTask] = []
    info: list[tuple[int, Any, bool]] = []  # (id, ScannedFile, already indexed)
    maybe_touched: list[tuple[int, Any, str]] = []  # (id, ScannedFile, stored hash)
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
            if known and old["size"] == f.size:
                maybe_touched.append((fid, f, known))  # decided below, by content
                continue
            report.changed += 1
        tasks.append(DecodeTask(len(tasks), str(root / f.path), known))
        info.append((fid, f, old is not None))
    touched_only = _split_touched(root, maybe_touched, tasks, info, report)
    writer.manifest["next_id"] = next_id
    if touched_only:  # same bytes, new mtime: re-dated, not re-encoded
        writer.table = _touch(writer.table, touched_only)
    if gone:
        writer.table = metadata.drop_ids(writer.table, gone)

    if not tasks:
        if gone or touched_only:
            writer.commit(data_changed=bool(gone))
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
            fid, f, indexed = info[rec.index]
            if rec.unchanged:  # changed back since it was hashed above
                touched[fid] = (f.size, f.mtime_ns)
                report.changed -= 1
                report.unchanged += 1
                continue
            if rec.read_failed and indexed:
                # there but unreadable now: keep the indexed row and vector (its old size
                # and mtime make the next run try again)
                report.errors += 1
                if len(report.error_samples) < 20:
                    report.error_samples.append((f.path, f"{rec.error}; the indexed row is kept"))
                continue
            dirty.add(fid)
            shown, raw = names.to_columns(f.path)
            row = {
                "id": fid,
                "path": shown,
                "path_bytes": raw,
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


def _split_touched(
    root: Path,
    candidates: list[tuple[int, Any, str]],
    tasks: list[DecodeTask],
    info: list[tuple[int, Any, bool]],
    report: IngestReport,
) -> dict[int, tuple[int, int]]:
    """Of the files with a new mtime but their old size, those with their old bytes are
    counted unchanged and returned ({id: (size, mtime_ns)}); the rest join ``tasks`` as
    changed. Done before encoding, so that the encode total is what gets encoded."""
    same = same_bytes([(root / f.path, known) for _, f, known in candidates])
    touched: dict[int, tuple[int, int]] = {}
    for (fid, f, known), unchanged in zip(candidates, same, strict=True):
        if unchanged:
            touched[fid] = (f.size, f.mtime_ns)
            report.unchanged += 1
        else:
            report.changed += 1
            tasks.append(DecodeTask(len(tasks), str(root / f.path), known))
            info.append((fid, f, True))
    return touched


def _decoder(
    tasks: list[DecodeTask], encoder: Encoder, opts: IngestOptions, workers: int
) -> tuple[Iterable[tuple[list[Any], Any]], str]:
    """The batches to encode and the decoder's name: nvJPEG on the encoder's GPU when
    possible (see ``IngestOptions.gpu_decode``), else Pillow in worker processes."""
    from vlmsearch.imaging import gpu_decode

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
    for shard in m.get("shards", []):
        integrity.verify_all(writer.layout.path, m, integrity.shard_files(shard, sparse))
    live = VectorTable.load(writer.layout.vectors_dir, m.get("shards", []), dim, ok_ids, sparse)
    if sparse:
        _finish_postings(writer, opts, report, start_data_generation, live, progress)
        return
    requested = (m.get("index") or {}).get("requested") if opts.index is None else opts.index
    requested = requested or "auto"
    plan = plan_index(requested, len(live), dim, opts.memory_budget)
    old = m.get("index") or {}
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
    index = None
    if old_current:
        index = integrity.read_checked(writer.layout.path, m, old["file"], faiss_store.read_index)
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
        index, plan.search_params, tuning = build_tuned_index(
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
