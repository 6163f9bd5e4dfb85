"""``vlmsearch check [--repair]``: verify a collection's files; rebuild what can be rebuilt.

:func:`check` looks at every file the manifest names: there, of the recorded size and
digest (see :mod:`vlmsearch.storage.integrity`), and readable. :func:`repair` then
commits a consistent state without re-encoding anything:

- a damaged FAISS index or posting lists: rebuilt from the vectors;
- damaged metadata: the newest earlier ``metadata-*.parquet`` still on disk (the
  previous generation is kept until the next commit), else none;
- a damaged vector shard: dropped, and the rows whose vectors it held are dropped from
  the metadata, so that the next ``vlmsearch index`` finds those files new and encodes
  them (only them); rows left without a vector by restored metadata are dropped alike;
- damaged caption embeddings: dropped (the next ``search --text-column`` embeds again);
- a damaged region student: dropped (``vlmsearch distill`` trains another).

A damaged manifest cannot be repaired here: ``vlmsearch index --rebuild`` starts over.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmsearch.errors import CollectionError
from vlmsearch.ingest.finish import finish_index
from vlmsearch.ingest.options import IngestOptions, IngestReport
from vlmsearch.storage import integrity, metadata, segments
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.vectors import _load_csr


@dataclass
class FileStatus:
    name: str  # relative to the collection directory
    kind: str
    status: str  # ok | unverified (no checksum recorded; readable) | missing | damaged
    problem: str | None = None


@dataclass
class CheckReport:
    collection: str
    generation: int | None = None
    manifest_error: str | None = None
    files: list[FileStatus] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what --repair did
    reencode: list[str] = field(default_factory=list)  # paths whose vectors were lost

    @property
    def damaged(self) -> list[FileStatus]:
        return [f for f in self.files if f.status in ("missing", "damaged")]

    @property
    def healthy(self) -> bool:
        return self.manifest_error is None and not self.damaged

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["healthy"] = self.healthy
        return d


def kind_of(name: str) -> str:
    if name.startswith("vectors/"):
        return "vector ids" if name.endswith(".ids.npy") else "vectors"
    if name.startswith(("metadata-", "seg-", "tomb-", "col-")):
        return "metadata"
    if name.endswith(".faiss"):
        return "faiss index"
    if name.endswith((".ivfdata", ".dead.npy")):
        return "on-disk index"
    if name.endswith(".postings.npz"):
        return "posting lists"
    if name.startswith("textvec-"):
        return "text embeddings"
    return "region student" if name.startswith("student-") else "other"


def check(layout: Layout) -> CheckReport:
    """Verify every file the manifest names (existence, size, digest, readability)."""
    report = CheckReport(str(layout.path))
    try:
        manifest = layout.read_manifest()
    except CollectionError as e:
        report.manifest_error = str(e)
        return report
    report.generation = int(manifest["generation"])
    for name in integrity.committed_files(manifest):
        status = FileStatus(name, kind_of(name), "ok")
        try:
            path = integrity.verify(layout.path, manifest, name)
            has_sum = isinstance((manifest.get("checksums") or {}).get(name), dict)
            with integrity.reading(path, layout.path):
                _probe(path, status.kind, manifest, has_sum)
            if not has_sum:
                status.status = "unverified"
        except integrity.MissingFileError as e:
            status.status, status.problem = "missing", e.problem
        except integrity.DamagedFileError as e:
            status.status, status.problem = "damaged", e.problem
        report.files.append(status)
    return report


def _probe(path: Path, kind: str, manifest: dict[str, Any], has_sum: bool) -> None:
    """Read the file as its reader would; raise what that reader raises."""
    dim = int(manifest["dim"])
    if kind == "metadata":
        table = metadata.read_table(path)
        missing = set(metadata.BASE_COLUMNS) - set(table.column_names)
        if not path.name.startswith("metadata-"):  # format 2: what each file must hold
            need = {"seg": {*metadata.BASE_COLUMNS, *segments.HIDDEN}, "tomb": {"id", "_tgen"}}
            missing = need.get(path.name.split("-")[0], {"id", "_cgen"}) - set(table.column_names)
        if missing:
            raise ValueError(f"columns {sorted(missing)} are missing")
    elif kind == "vector ids":
        ids = np.load(path, mmap_mode="r")
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise ValueError(f"ids of shape {ids.shape} and type {ids.dtype}")
        data = path.with_name(path.name.replace(".ids.npy", ".f16.npy"))
        if data.is_file() and np.load(data, mmap_mode="r").shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids for the {data.name} rows")
    elif kind == "vectors":
        v = _load_csr(path) if path.name.endswith(".npz") else np.load(path, mmap_mode="r")
        if v.ndim != 2 or v.shape[1] != dim:
            raise ValueError(f"vectors of shape {v.shape}, the collection has dim {dim}")
    elif kind == "posting lists":
        from vlmsearch.storage.ann.postings import PostingIndex

        PostingIndex.read(path)
    elif kind == "text embeddings":
        from vlmsearch.storage.column_vectors import TextVectors

        TextVectors.read(path)
    elif kind == "faiss index" and not has_sum:
        # without a digest nothing vouches for the bytes, and FAISS may abort the whole
        # process on a garbled file: read it in a child process
        code = "import faiss, sys; faiss.read_index(sys.argv[1])"
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise ValueError(f"FAISS cannot read it ({lines[-1][:200] if lines else 'crashed'})")
    elif kind == "region student" and not has_sum:
        import torch

        torch.load(path, map_location="cpu", weights_only=True)


def repair(layout: Layout, progress: Any = None, locked: bool = False) -> CheckReport:
    """Check, then commit a consistent state (see the module docstring); returns the
    check of the repaired collection with what was done and what must be re-encoded."""
    if not locked:
        with layout.lock():
            return repair(layout, progress, locked=True)
    report = check(layout)
    if report.manifest_error:
        raise CollectionError(report.manifest_error)
    if report.healthy:
        return report
    bad = {f.name for f in report.damaged}
    manifest = layout.read_manifest()
    m = copy.deepcopy(manifest)
    done: list[str] = []
    sparse = m.get("vectors") == "sparse"

    kept, lost = _drop_shards(layout, m, bad, sparse, done)
    table, restored = _metadata(layout, manifest, bad, done)
    ok = table.filter(pc.equal(table["status"], "ok"))["id"].to_numpy()
    has_vector = np.isin(ok, kept)
    lost_ids = np.union1d(ok[~has_vector], np.intersect1d(ok, lost))
    lost_rows = table.filter(pc.is_in(table["id"], value_set=pa.array(lost_ids, pa.int64())))
    reencode = [str(p) for p in lost_rows["path"].to_pylist()]
    table = metadata.drop_ids(table, lost_ids)
    if reencode:
        done.append(
            f"{len(reencode)} files lost their vectors and were dropped from the metadata: "
            "the next `vlmsearch index` encodes them again"
        )
    data_changed = bool(bad & _shard_names(manifest, sparse)) or restored or bool(reencode)
    index_file = (m.get("index") or {}).get("file")
    # an on-disk index is damaged when any of its files is (lists, deltas, dead ids)
    index_files = {index_file, *integrity.ondisk_index_files(m.get("index") or {})}
    rebuild_index = data_changed or bool(index_files & bad)
    if rebuild_index and m.get("index"):
        dropped = ("file", "generation", "ondisk")
        m["index"] = {k: v for k, v in m["index"].items() if k not in dropped}
    for column, entry in list((m.get("text_vectors") or {}).items()):
        if entry.get("file") in bad:
            del m["text_vectors"][column]
            done.append(
                f"embeddings of column {column!r} dropped: the next "
                f"`vlmsearch search --text-column {column}` embeds its texts again"
            )
    if (m.get("region_student") or {}).get("file") in bad:
        del m["region_student"]
        done.append("the region student was dropped: train it again with `vlmsearch distill`")

    from vlmsearch.storage.store import CollectionWriter

    writer = CollectionWriter(layout, m, table)
    writer.previous = manifest
    writer.commit(data_changed=data_changed)
    if rebuild_index:
        ingest_report = IngestReport(str(m.get("root")), str(layout.path))
        start = int(writer.manifest.get("data_generation", 0))
        finish_index(writer, IngestOptions(), ingest_report, start, set(), progress)
        done.append(f"index rebuilt from the stored vectors ({ingest_report.index_factory})")
    final = check(layout)
    final.repaired, final.reencode = done, reencode
    return final


def _shard_names(manifest: dict[str, Any], sparse: bool) -> set[str]:
    return {n for s in manifest.get("shards", []) for n in integrity.shard_files(s, sparse)}


def _drop_shards(
    layout: Layout, m: dict[str, Any], bad: set[str], sparse: bool, done: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Drop damaged shards from ``m``; returns the ids with an intact vector, and the ids
    whose newest vector was in a dropped shard (an older one elsewhere is stale)."""
    shards = list(m.get("shards", []))
    ids_of: dict[str, np.ndarray | None] = {}
    for s in shards:
        ids_name = integrity.shard_files(s, sparse)[1]
        ids_of[s] = None if ids_name in bad else np.load(layout.file(ids_name))
    kept, lost_parts = [], []
    for i, s in enumerate(shards):
        if not bad & set(integrity.shard_files(s, sparse)):
            kept.append(s)
            continue
        done.append(f"vector shard {s} dropped (damaged)")
        dropped_ids = ids_of[s]
        if dropped_ids is not None:
            later = [ids_of[t] for t in shards[i + 1 :] if t not in bad and ids_of[t] is not None]
            newer = np.concatenate(later) if later else np.zeros(0, np.int64)
            lost_parts.append(np.setdiff1d(dropped_ids, newer))
    m["shards"] = kept
    kept_ids = [ids_of[s] for s in kept]
    intact = np.unique(np.concatenate(kept_ids)) if kept_ids else np.zeros(0, np.int64)
    lost = np.unique(np.concatenate(lost_parts)) if lost_parts else np.zeros(0, np.int64)
    return intact, lost


_META = re.compile(r"^metadata-(\d+)\.parquet$")


def _metadata(
    layout: Layout, manifest: dict[str, Any], bad: set[str], done: list[str]
) -> tuple[pa.Table, bool]:
    """The metadata to keep, and whether it had to be restored."""
    if int(manifest.get("format_version") or 2) >= 2:
        return _segments_metadata(layout, manifest, bad, done)
    name = manifest.get("metadata_file")
    if not name:
        return metadata.empty_table(), False
    if name not in bad:
        return metadata.read_table(layout.file(name)), False
    current = int(_META.match(name).group(1)) if _META.match(name) else 1 << 62
    older = sorted(
        (int(mt.group(1)), p)
        for p in layout.path.iterdir()
        if (mt := _META.match(p.name)) and int(mt.group(1)) < current
    )
    for gen, path in reversed(older):
        try:
            with integrity.reading(path, layout.path):
                table = metadata.read_table(path)
                _probe(path, "metadata", manifest, True)
        except integrity.DamagedFileError:
            continue
        done.append(f"metadata restored from {path.name} (generation {gen})")
        return table, True
    done.append(
        "metadata lost and no earlier generation is left: the stored vectors cannot be "
        "matched to files, so the next `vlmsearch index` encodes every file again"
    )
    return metadata.empty_table(), True


def _segments_metadata(
    layout: Layout, manifest: dict[str, Any], bad: set[str], done: list[str]
) -> tuple[pa.Table, bool]:
    """Format 2: the live rows of the intact metadata files. A damaged segment loses its
    rows (an older version of a row comes back, and the next index run sees that file
    changed); a damaged tombstone file lets killed versions back, so each id keeps its
    newest row; a damaged column segment loses its values. Repair then commits the rows
    as one segment (a rewrite, off the hot path)."""
    from vlmsearch.storage.live import LiveView

    lost = [f for f in segments.files(manifest) if f in bad]
    kept = dict(manifest)
    for kind in segments.KINDS:
        kept[kind] = [e for e in segments.entries(manifest, kind) if e["file"] not in bad]
    view = LiveView(layout.path, kept)
    try:
        table = view.table(hidden=True)
    finally:
        view.close()
    if "_gen" in table.column_names and table.num_rows:
        newest = table.sort_by([("id", "ascending"), ("_gen", "descending")])
        ids = newest["id"].to_numpy()
        first = np.ones(len(ids), bool)
        first[1:] = ids[1:] != ids[:-1]
        table = newest.filter(pa.array(first))
    table = table.drop_columns([c for c in segments.HIDDEN if c in table.column_names])
    for name in lost:
        done.append(f"metadata file {name} dropped (damaged); the rows it held are gone")
    return table, bool(lost)
