"""The decode and encode stage of an index run: images are decoded in batches (Pillow in
worker processes, or nvJPEG on the encoder's GPU), encoded, and committed in checkpoints
of ``commit_every`` images or ``commit_seconds``, so a killed run loses at most one."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import CollectionError
from vlmsearch.imaging import exif, sources
from vlmsearch.imaging.decode import DecodeTask, iter_decoded
from vlmsearch.imaging.scan import ScannedFile
from vlmsearch.ingest.columns import field_columns
from vlmsearch.ingest.diff import Changes
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.onnx.image_encoder import OnnxIndexEncoder
from vlmsearch.storage.store import CollectionWriter
from vlmsearch.storage.vectors import stack, to_storage


class _Checkpoint:
    """Rows, re-dated files and vectors waiting for the next commit."""

    def __init__(self, writer: CollectionWriter) -> None:
        self.writer = writer
        self.rows: list[dict[str, Any]] = []
        self.touched: dict[int, tuple[int, int]] = {}
        self.ids: list[np.ndarray] = []
        self.vecs: list[np.ndarray] = []
        self.fields: dict[int, dict[str, Any]] = {}  # captions and fields from the source
        self.exif: dict[int, dict[str, Any]] = {}  # EXIF columns of every written row
        self.count = 0  # images handled since the last commit
        self.last_commit = time.perf_counter()

    def due(self, opts: IngestOptions) -> bool:
        return self.count >= opts.commit_every or (
            time.perf_counter() - self.last_commit >= opts.commit_seconds
        )

    def commit(self) -> None:
        writer = self.writer
        # only this checkpoint's rows are written: a new segment, not the whole table
        writer.upsert(self.rows)
        writer.touch(self.touched)
        if self.fields:
            ids = list(self.fields)
            writer.set_columns(np.asarray(ids, np.int64), field_columns(list(self.fields.values())))
        if self.exif:  # nulls too: a re-encoded image without EXIF loses its old values
            ids = np.asarray(list(self.exif), np.int64)
            writer.set_columns(ids, exif.to_columns(list(self.exif.values())))
        shard = (np.concatenate(self.ids), stack(self.vecs)) if self.ids else None
        writer.commit(shard=shard)
        self.rows.clear()
        self.fields.clear()
        self.exif.clear()
        self.touched.clear()
        self.ids.clear()
        self.vecs.clear()
        self.count = 0
        self.last_commit = time.perf_counter()


def encode_changes(
    writer: CollectionWriter,
    changes: Changes,
    encoder: Encoder | OnnxIndexEncoder,
    opts: IngestOptions,
    report: IngestReport,
    progress: ProgressFn | None,
) -> set[int]:
    """Decode, encode and commit every task in ``changes``; returns the ids whose rows were
    written (an unreadable file that was indexed before keeps its row, and is not one)."""
    workers = opts.workers if opts.workers is not None else min(4, os.cpu_count() or 1)
    pending = _Checkpoint(writer)
    written: set[int] = set()
    enc_t0 = time.perf_counter()
    batches, decoder = _decoder(changes.tasks, encoder, opts, workers)
    record_decoder(writer.manifest, decoder)
    for records, pixels in batches:
        vecs = encoder.encode_pixels(pixels) if pixels is not None else None
        ok_ids = _take_records(records, changes, pending, report, written)
        if vecs is not None:
            pending.ids.append(np.asarray(ok_ids, np.int64))
            pending.vecs.append(to_storage(vecs, encoder.sparse_output))
            report.encoded += len(ok_ids)
        pending.count += len(records)
        if progress:
            progress("encode", len(records), len(changes.tasks))
        if pending.due(opts):
            pending.commit()
    pending.commit()
    report.encode_seconds = time.perf_counter() - enc_t0
    return written


def record_decoder(manifest: dict[str, Any], decoder: str) -> None:
    """Name ``decoder`` in the manifest's ``decoders_used`` (pillow, pillow-draft, nvjpeg)."""
    used = manifest["preprocessing"]["decode"].setdefault("decoders_used", [])
    if decoder not in used:
        used.append(decoder)


def _take_records(
    records: list[Any],
    changes: Changes,
    pending: _Checkpoint,
    report: IngestReport,
    written: set[int],
) -> list[int]:
    """Queue the metadata rows of one decoded batch; returns the ids of the images that
    decoded (in batch order: the rows of the batch's vectors)."""
    now = dt.datetime.now(dt.timezone.utc)
    ok_ids = []
    for rec in records:
        fid, f, indexed = changes.info[rec.index]
        if rec.unchanged:  # changed back since it was hashed above
            pending.touched[fid] = (f.size, f.mtime_ns)
            report.changed -= 1
            report.unchanged += 1
            continue
        if rec.read_failed and indexed:
            # there but unreadable now: keep the indexed row and vector (its old size and
            # mtime make the next run try again)
            report.add_error(f.path, f"{rec.error}; the indexed row is kept")
            continue
        written.add(fid)
        pending.rows.append(_row(fid, f, rec, now))
        pending.exif[fid] = rec.exif or {}
        if f.extra:
            fields = sources.read_extras(changes.root, f)
            if fields:
                pending.fields[fid] = fields
        if rec.error is None:
            ok_ids.append(fid)
        else:
            report.add_error(f.path, rec.error)
    return ok_ids


def _row(fid: int, f: ScannedFile, rec: Any, now: dt.datetime) -> dict[str, Any]:
    """The metadata row of a decoded (or failed) file."""
    shown, raw = names.to_columns(f.path)
    return {
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


def _decoder(
    tasks: list[DecodeTask], encoder: Encoder | OnnxIndexEncoder, opts: IngestOptions, workers: int
) -> tuple[Iterable[tuple[list[Any], Any]], str]:
    """The batches to encode and the decoder's name: nvJPEG on the encoder's GPU when
    possible (see ``IngestOptions.gpu_decode``), else Pillow in worker processes (torch's
    DataLoader, or a plain process pool with numpy preprocessing for the ONNX tower)."""
    if isinstance(encoder, OnnxIndexEncoder):
        from vlmsearch.imaging.pool_decode import iter_decoded_arrays

        pp = encoder.preprocess
        draft = (pp.crop, pp.crop) if opts.fast_decode else None
        arrays = iter_decoded_arrays(tasks, pp, opts.batch_size, workers, opts.max_pixels, draft)
        return arrays, "pillow-draft" if draft else "pillow"
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
    draft = pillow_draft(encoder, opts)
    transform = encoder.image_transform()
    batches = iter_decoded(tasks, transform, opts.batch_size, workers, opts.max_pixels, draft)
    return batches, "pillow-draft" if draft else "pillow"


def pillow_draft(encoder: Encoder, opts: IngestOptions) -> tuple[int, int] | None:
    """The JPEG draft size for ``--fast-decode`` (None without it): the model's input
    size, which a draft-decoded image never goes below."""
    if not opts.fast_decode:
        return None
    pp = encoder.tensor_preprocess()
    if pp is None:
        raise CollectionError(
            f"--fast-decode needs to know the input size of {encoder.display_name}, "
            "which does not say it (index without --fast-decode)"
        )
    return (pp.size, pp.size)
