"""The decode and encode stage on a Ray cluster (``vlmsearch index --ray auto|ADDRESS``).

The driver scans and diffs as on one machine; only the decode -> encode stage moves out.
Ray Data decodes blocks of tasks in CPU tasks (the same per-file read, hash and decode as
:class:`~vlmsearch.imaging.decode.ImageFileDataset`) and encodes them in a pool of actors
that each build the collection's model once, from its spec. An actor writes each batch's
vectors into ``staging/`` inside the collection, in the shard format, keyed by task index;
the driver alone turns finished batches into rows (the same ``_take_records`` as one
machine) and commits them in checkpoints, so commits stay atomic and ordered.

Exactly once: a batch whose task indices were already taken (a retried Ray task) is
skipped; staged files of a killed driver are never named by a manifest and are discarded
at the start of the next run, whose diff re-encodes their images. Workers read the image
paths and write into the collection folder, so a cluster needs both on a shared
filesystem. This is the only module that imports ray, and only when a run asks for it.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.errors import CollectionError, VlmsearchError
from vlmsearch.imaging import sources
from vlmsearch.imaging.decode import Decoded, DecodeTask, ImageFileDataset
from vlmsearch.ingest.diff import Changes
from vlmsearch.ingest.encode import _Checkpoint, _take_records, pillow_draft, record_decoder
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.store import CollectionWriter
from vlmsearch.storage.vectors import read_shard, remove_shard, to_storage, write_shard

STAGING = "staging"
EXTRA = "pip install 'vlmsearch[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra (checked before any model
    loads or any file is read)."""
    try:
        import ray
        import ray.data  # noqa: F401  (the part indexing uses; a bare ray lacks it)
    except ImportError:
        raise VlmsearchError(f"--ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


def discard_staging(layout: Layout) -> None:
    """Remove what a killed ``--ray`` run staged: no manifest names it, and the diff of this
    run re-encodes its images. Call with the writer lock held."""
    shutil.rmtree(layout.path / STAGING, ignore_errors=True)


def encode_changes_ray(
    writer: CollectionWriter,
    changes: Changes,
    encoder: Encoder,
    opts: IngestOptions,
    report: IngestReport,
    progress: ProgressFn | None,
) -> set[int]:
    """:func:`~vlmsearch.ingest.encode.encode_changes` on Ray: the same checkpoints and
    rows, with the decoding and encoding done by the cluster's workers."""
    if opts.gpu_decode:
        raise CollectionError("--gpu-decode is not available with --ray (drop one of them)")
    ray = require_ray()
    started = connect(ray, opts.ray)
    staging = writer.layout.path / STAGING
    discard_staging(writer.layout)
    staging.mkdir()
    try:
        nodes, actors, gpus = _plan(ray)
        draft = pillow_draft(encoder, opts)
        record_decoder(writer.manifest, "pillow-draft" if draft else "pillow")
        writer.manifest["ingest"] = {"executor": {"kind": "ray", "nodes": nodes, "actors": actors}}
        ds = _dataset(ray, changes, encoder, opts, draft, staging, actors, gpus)
        try:
            return _collect(writer, changes, ds.iter_rows(), staging, opts, report, progress)
        except ray.exceptions.RayError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise CollectionError(
                f"the Ray run failed ({first}); what was committed is kept, run the index "
                "again to encode the rest"
            ) from e
    finally:
        discard_staging(writer.layout)
        if started:
            ray.shutdown()


def connect(ray: Any, address: str | None) -> bool:
    """Join (or start) the Ray runtime; True when this call started it. A runtime already
    initialised in this process (a test's cluster, a notebook) is used as it is."""
    if ray.is_initialized():
        return False
    # a model registered by configuration (VLMSEARCH_MODEL_CONFIGS) must be known to workers
    env = {k: v for k, v in os.environ.items() if k.startswith("VLMSEARCH_")}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
    try:
        if address in (None, "auto"):
            # "local": a new runtime on this machine's cores and GPUs, never a cluster
            # that happens to run here (plain ray.init() would join that one)
            ray.init(address="local", include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise VlmsearchError(f"cannot join the Ray cluster at {address}: {e}") from None
    return True


def _plan(ray: Any) -> tuple[int, int, int]:
    """(alive nodes, encoder actors, GPUs): one actor per GPU, decoding in CPU tasks
    beside them; without GPUs one actor per core, and Ray Data fuses the decoding into
    the actors (same resources), so pixels never cross the object store."""
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = int(res.get("CPU", 1))
    actors = gpus if gpus else max(1, cpus)
    return nodes, actors, gpus


def _dataset(
    ray: Any,
    changes: Changes,
    encoder: Encoder,
    opts: IngestOptions,
    draft: tuple[int, int] | None,
    staging: Path,
    actors: int,
    gpus: int,
) -> Any:
    """Tasks -> decoded batches (CPU tasks) -> staged vectors (an actor pool)."""
    tasks, root = changes.tasks, changes.root
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own, from the driver's counts
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"index": t.index, "path": t.path, "known_hash": t.known_hash or ""} for t in tasks]
    blocks = max(1, -(-len(items) // opts.batch_size))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        _decode_batch,
        batch_size=opts.batch_size,
        batch_format="pyarrow",
        fn_kwargs={
            "transform": encoder.image_transform(),
            "max_pixels": opts.max_pixels,
            "draft": draft,
            "source_opts": (root, opts.image_column, opts.image_base),
        },
        num_cpus=1,  # a task lost with its node runs again (Ray retries it, 3 times)
    )
    return ds.map_batches(
        _EncodeActor,
        batch_size=1,  # one row is one decoded batch
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "spec": encoder.spec,
            "staging": str(staging),
            "sparse": encoder.sparse_output,
        },
        # Ray Data restarts an actor lost with its node and retries its batches (its
        # defaults: max_restarts and max_task_retries -1); the pool may shrink to one
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        num_cpus=0 if gpus else 1,
        num_gpus=1 if gpus else 0,
    )


def _decode_batch(
    batch: Any,
    transform: Any,
    max_pixels: int,
    draft: tuple[int, int] | None,
    source_opts: tuple[str, str | None, str | None] = ("", None, None),
) -> Any:
    """A Ray task: decode one batch of tasks into one row (records, stacked pixels), so a
    batch crosses the object store as one buffer, as the DataLoader path collates it.
    ``source_opts`` (root, Parquet image column, base folder) tell this worker how the
    dataset containers under the root are read."""
    import pyarrow as pa

    root, column, base = source_opts
    if root and (column or base):
        sources.configure(root, sources.SourceOptions(column, base))

    tasks = [
        DecodeTask(int(i), str(p), h or None)
        for i, p, h in zip(
            batch["index"].to_pylist(),
            batch["path"].to_pylist(),
            batch["known_hash"].to_pylist(),
            strict=True,
        )
    ]
    ds = ImageFileDataset(tasks, transform, max_pixels, draft)
    records: list[Decoded] = [ds[i] for i in range(len(ds))]
    ok = [r for r in records if r.pixels is not None]
    pixels = np.stack([np.asarray(r.pixels) for r in ok]) if ok else None
    ok_index = [r.index for r in ok]
    for r in records:
        r.pixels = None
    blob = pickle.dumps((records, ok_index, pixels), protocol=pickle.HIGHEST_PROTOCOL)
    return pa.table({"payload": pa.array([blob], pa.large_binary())})


class _EncodeActor:
    """A Ray actor: the collection's model, built once from its spec, encodes decoded
    batches and stages their vectors (ids are task indices; the driver maps them)."""

    def __init__(self, spec: dict[str, Any], staging: str, sparse: bool) -> None:
        import ray

        from vlmsearch.models.encoders import encoder_from_spec

        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.encoder = encoder_from_spec(spec, device=device)
        self.staging = Path(staging)
        self.sparse = sparse
        ctx = ray.get_runtime_context()
        self.worker = f"{ctx.get_node_id()[:8]}/{ctx.get_actor_id()[:8]}"

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import torch

        out: dict[str, list[Any]] = {"records": [], "staged": [], "worker": []}
        for blob in batch["payload"].to_pylist():
            records, ok_index, pixels = pickle.loads(blob)
            name = ""
            if pixels is not None:
                vecs = self.encoder.encode_pixels(torch.from_numpy(pixels))
                name = uuid.uuid4().hex  # a retried batch stages anew, never over a taken one
                rows = to_storage(vecs, self.sparse)
                write_shard(self.staging, name, np.asarray(ok_index, np.int64), rows)
            out["records"].append(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
            out["staged"].append(name)
            out["worker"].append(self.worker)
        return pa.table(
            {
                "records": pa.array(out["records"], pa.large_binary()),
                "staged": pa.array(out["staged"], pa.string()),
                "worker": pa.array(out["worker"], pa.string()),
            }
        )


def _collect(
    writer: CollectionWriter,
    changes: Changes,
    rows: Any,
    staging: Path,
    opts: IngestOptions,
    report: IngestReport,
    progress: ProgressFn | None,
) -> set[int]:
    """Take finished batches as they come and commit them in checkpoints."""
    pending = _Checkpoint(writer)
    written: set[int] = set()
    taken: set[int] = set()  # task indices already taken: a retried batch adds nothing
    staged: list[str] = []  # staged files of the pending checkpoint
    enc_t0 = time.perf_counter()
    for row in rows:
        records = [r for r in pickle.loads(row["records"]) if r.index not in taken]
        fresh = {r.index for r in records}
        taken |= fresh
        if row["staged"]:
            _take_vectors(staging, row["staged"], fresh, changes, pending, report)
            staged.append(row["staged"])
        _take_records(records, changes, pending, report, written)
        pending.count += len(records)
        report.workers[row["worker"]] = report.workers.get(row["worker"], 0) + len(records)
        if progress and records:
            progress("encode", len(records), len(changes.tasks))
        if pending.due(opts):
            _commit(pending, staging, staged)
    _commit(pending, staging, staged)
    if len(taken) != len(changes.tasks):  # Ray lost a batch without an error: never commit less
        raise CollectionError(
            f"the Ray run returned {len(taken)} of {len(changes.tasks)} images; what was "
            "committed is kept, run the index again to encode the rest"
        )
    report.encode_seconds = time.perf_counter() - enc_t0
    return written


def _take_vectors(
    staging: Path,
    name: str,
    fresh: set[int],
    changes: Changes,
    pending: _Checkpoint,
    report: IngestReport,
) -> None:
    """Queue the staged vectors of one batch under their collection ids (rows of tasks
    taken before are dropped)."""
    sparse = bool(pending.writer.manifest.get("vectors") == "sparse")
    index, vecs = read_shard(staging, name, sparse)
    keep = np.fromiter((int(i) in fresh for i in index), bool, len(index))
    if not keep.any():
        return
    ids = np.asarray([changes.info[int(i)][0] for i in index[keep]], np.int64)
    pending.ids.append(ids)
    pending.vecs.append(vecs[keep])  # as encode_changes queues them: CSR or float16 rows
    report.encoded += len(ids)


def _commit(pending: _Checkpoint, staging: Path, staged: list[str]) -> None:
    """Commit the checkpoint, then drop its staged files (the shard now holds them)."""
    pending.commit()
    for name in staged:
        remove_shard(staging, name)
    staged.clear()
