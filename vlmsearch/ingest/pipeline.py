"""Incremental indexing: scan -> diff -> decode -> encode -> store (checkpointed) -> index.

Work is committed every ``commit_every`` images (or ``commit_seconds``): a vector shard,
the metadata table and the manifest, in that order. A killed run therefore loses at
most one checkpoint of work; the next run sees the committed rows as unchanged files
and encodes only the rest. Ids come from the manifest's ``next_id``, so committed ids
are never reused. The FAISS index is brought up to date once, at the end of a run.

The stages live in their own modules: :mod:`~vlmsearch.ingest.manifest` (the starting
state), :mod:`~vlmsearch.ingest.diff` (scan and diff), :mod:`~vlmsearch.ingest.encode`
(decode, encode, checkpoints) and :mod:`~vlmsearch.ingest.finish` (the index).
"""

from __future__ import annotations

import time
from pathlib import Path

from vlmsearch import names
from vlmsearch.errors import CollectionError
from vlmsearch.imaging.sources.video import require_av
from vlmsearch.ingest.diff import find_changes
from vlmsearch.ingest.encode import encode_changes
from vlmsearch.ingest.exif_backfill import backfill_exif
from vlmsearch.ingest.finish import finish_index
from vlmsearch.ingest.image_engine import check_precision, index_encoder
from vlmsearch.ingest.manifest import check_index_option, open_writer
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.ingest.ray_encode import discard_staging, encode_changes_ray, require_ray
from vlmsearch.ingest.repair import repair
from vlmsearch.ingest.source_options import source_options
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.lazy_encoder import LazyEncoder, as_lazy
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.maintenance import compact_if_due
from vlmsearch.storage.store import CollectionWriter

# IngestOptions and IngestReport live in vlmsearch.ingest.options; the README's Python API
# imports them from here, so this module names them as its own too.
__all__ = ["IngestOptions", "IngestReport", "ProgressFn", "ingest"]


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
    if opts.ray is not None:
        require_ray()  # a one-line error before any model loads or file is read
    if opts.video:
        require_av()
    check_precision(opts.precision, source.device, opts)  # before a model loads
    check_index_option(layout, encoder, opts)
    layout.prepare()
    with layout.lock():
        repairs: list[str] = []
        if opts.repair and not opts.rebuild and layout.exists():
            repairs = repair(layout, progress, locked=True).repaired
        writer, notices = open_writer(layout, root, source, opts)
        opts = source_options(writer.manifest, root, opts)
        report = IngestReport(str(root), str(layout.path), notices=repairs + notices)
        start_data_generation = int(writer.manifest.get("data_generation", 0))
        backfill_exif(writer, root, report, progress)  # rows indexed before EXIF columns
        dirty = _run(writer, root, source, opts, report, progress)
        finish_index(writer, opts, report, start_data_generation, dirty, progress)
        writer.migrate()  # a format-1 collection that had nothing new: migrated now
        if compact_if_due(writer):
            report.notices.append("metadata compacted (storage/compact.py thresholds)")
        report.generation = int(writer.manifest["generation"])
        report.load_seconds = source.load_seconds
        report.seconds = time.perf_counter() - t0
        return report


def _run(
    writer: CollectionWriter,
    root: Path,
    source: LazyEncoder,
    opts: IngestOptions,
    report: IngestReport,
    progress: ProgressFn | None,
) -> set[int]:
    """Scan, diff and encode; returns the dirty ids (deleted, new or re-encoded)."""
    discard_staging(writer.layout)  # what a killed --ray run staged and never committed
    changes = find_changes(writer, root, opts, report, progress)
    dirty = set(changes.gone)
    if not changes.tasks:
        if changes.gone or changes.touched:
            writer.commit(data_changed=bool(changes.gone))
        return dirty
    if opts.ray is not None:
        encoder = source.get()  # only now: a run with nothing to encode never builds it
        return dirty | encode_changes_ray(writer, changes, encoder, opts, report, progress)
    # the ONNX image tower on a CPU where it is faster (no torch), else the torch encoder
    local = index_encoder(source, opts)
    engine = getattr(local, "engine", "torch")
    executor = {"kind": "local", "engine": engine, "precision": opts.precision or "fp32"}
    writer.manifest["ingest"] = {"executor": executor}
    return dirty | encode_changes(writer, changes, local, opts, report, progress)
