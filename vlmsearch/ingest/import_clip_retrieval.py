"""Import a clip-retrieval ``inference`` output folder as a collection, without encoding.

clip-retrieval writes, per partition N, ``img_emb/img_emb_N.npy`` (one embedding a row),
``metadata/metadata_N.parquet`` (the same rows: ``image_path``, ``caption`` when text was
enabled, then any metadata fields) and optionally ``text_emb/text_emb_N.npy``; LAION's
embedding dumps have the same layout. Each partition becomes one commit: its vectors a
shard, its rows a segment (ids in partition order, so a re-run gives the same ids), its
caption and other fields added columns. A killed import resumes after the last committed
partition (the manifest's ``source`` records them), so nothing is duplicated. The index
is then built as ``vlmsearch index`` builds it.

The model that made the embeddings cannot be read from the folder: the caller names it,
and its dimension must match.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmsearch.errors import CollectionError
from vlmsearch.ingest.columns import column_name
from vlmsearch.ingest.finish import finish_index
from vlmsearch.ingest.manifest import new_manifest
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.storage import metadata
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.store import CollectionWriter

SOURCE_KIND = "clip-retrieval"
_PART = re.compile(r"^img_emb_(\d+)\.npy$")


@dataclass
class Part:
    """One partition of the folder: its number, vectors file and metadata file."""

    number: str
    vectors: Path
    metadata: Path
    rows: int
    dim: int


def find_parts(folder: Path) -> list[Part]:
    """The folder's partitions, checked (aligned files, equal row counts, one dimension)
    before anything is loaded; a one-line error names the first problem."""
    emb_dir, meta_dir = folder / "img_emb", folder / "metadata"
    if not emb_dir.is_dir() or not meta_dir.is_dir():
        raise CollectionError(
            f"{folder} is not a clip-retrieval inference folder (needs img_emb/ and metadata/)"
        )
    parts = []
    for p in sorted(emb_dir.iterdir(), key=lambda p: _number_key(p.name)):
        m = _PART.match(p.name)
        if not m:
            continue
        meta = meta_dir / f"metadata_{m.group(1)}.parquet"
        if not meta.is_file():
            raise CollectionError(f"{p.name} has no metadata file {meta.name} in {meta_dir}")
        try:
            arr = np.load(p, mmap_mode="r")
            meta_file = pq.ParquetFile(meta)
            rows, names = meta_file.metadata.num_rows, meta_file.schema_arrow.names
        except (OSError, ValueError) as e:
            raise CollectionError(f"cannot read {p.name} or {meta.name}: {e}") from None
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise CollectionError(f"{p.name} holds {arr.shape} vectors but {meta.name} {rows} rows")
        if "image_path" not in names:
            raise CollectionError(f"{meta.name} has no image_path column (columns: {names})")
        parts.append(Part(m.group(1), p, meta, rows, int(arr.shape[1])))
    if not parts:
        raise CollectionError(f"no img_emb_N.npy file in {emb_dir}")
    dims = {p.dim for p in parts}
    if len(dims) > 1:
        raise CollectionError(f"the embedding files disagree on the dimension: {sorted(dims)}")
    return parts


def _number_key(name: str) -> tuple[int, str]:
    m = _PART.match(name)
    return (int(m.group(1)) if m else -1, name)


def check_target(layout: Layout, folder: Path) -> dict[str, Any] | None:
    """The manifest of an import of ``folder`` to resume, None for a new collection;
    any other existing collection is refused."""
    if not layout.manifest_path.is_file():
        return None
    m = layout.read_manifest()
    source = m.get("source") or {}
    if source.get("kind") != SOURCE_KIND or source.get("folder") != str(folder.resolve()):
        raise CollectionError(
            f"{layout.path} is already a collection (not an import of {folder}); "
            "import into a new --collection"
        )
    return m


def import_clip_retrieval(
    folder: Path,
    layout: Layout,
    encoder: Encoder,
    root: Path | None = None,
    options: IngestOptions | None = None,
    progress: ProgressFn | None = None,
) -> IngestReport:
    """Import ``folder`` into the collection at ``layout`` (new, or an interrupted import
    of the same folder, which resumes). ``encoder``: the model that made the embeddings;
    ``root``: the folder image paths are relative to (default: their common folder when
    they are local files, else ``folder``)."""
    folder = folder.resolve()
    opts = options or IngestOptions()
    parts = find_parts(folder)
    if encoder.sparse_output or parts[0].dim != encoder.dim:
        raise CollectionError(
            f"the embeddings have {parts[0].dim} dimensions but the model "
            f"{encoder.spec.get('name')!r} makes {encoder.dim}"
            + (" sparse vectors" if encoder.sparse_output else "")
            + "; name the model that made them"
        )
    layout.prepare()
    with layout.lock():
        existing = check_target(layout, folder)
        if existing is None:
            base = root.resolve() if root else _common_root(parts, folder)
            manifest = new_manifest(base, encoder, opts)
            manifest["source"] = {"kind": SOURCE_KIND, "folder": str(folder), "parts_done": []}
        else:
            manifest = existing
        base = Path(manifest["root"])
        writer = CollectionWriter(layout, manifest)
        writer.previous = existing
        report = IngestReport(str(base), str(layout.path))
        start = int(manifest.get("data_generation", 0))
        done = set(manifest["source"]["parts_done"])
        total = sum(p.rows for p in parts)
        for part in parts:
            if part.number in done:
                report.unchanged += part.rows
            else:
                _commit_part(writer, part, base)
                report.new += part.rows
            if progress:
                progress("import", part.rows, total)
        report.scanned = total
        finish_index(writer, opts, report, start, set(), progress)
        report.generation = int(writer.manifest.get("generation", 0))
    return report


def _common_root(parts: list[Part], folder: Path) -> Path:
    """The common folder of every part's image paths when all are absolute local paths."""
    dirs: set[str] = set()
    for part in parts:
        for p in pq.read_table(part.metadata, columns=["image_path"])["image_path"].to_pylist():
            if not (isinstance(p, str) and os.path.isabs(p)):
                return folder
            dirs.add(os.path.dirname(p))
    return Path(os.path.commonpath(sorted(dirs))) if dirs else folder


def _commit_part(writer: CollectionWriter, part: Part, base: Path) -> None:
    """One partition as one commit: vectors (unit length, float16), rows, columns."""
    table = pq.read_table(part.metadata)
    vectors = np.asarray(np.load(part.vectors, mmap_mode="r"), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    start = int(writer.manifest.get("next_id", 0))
    ids = np.arange(start, start + part.rows, dtype=np.int64)
    paths = table["image_path"].to_pylist()
    writer.upsert([_row(int(i), p, base) for i, p in zip(ids, paths, strict=True)])
    columns = _extra_columns(table)
    if columns:
        writer.set_columns(ids, columns)
    writer.manifest["next_id"] = start + part.rows
    source = dict(writer.manifest["source"])
    source["parts_done"] = [*source.get("parts_done", []), part.number]
    writer.manifest["source"] = source
    writer.commit(shard=(ids, vectors.astype(np.float16)))


def _row(i: int, image_path: Any, base: Path) -> dict[str, Any]:
    row = {c: None for c in metadata.BASE_COLUMNS}
    path = str(image_path)
    size = mtime = 0
    if os.path.isabs(path):
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            pass
        with contextlib.suppress(ValueError):  # outside the root: kept as it is
            path = Path(path).relative_to(base).as_posix()
    row.update(id=i, path=path, size=size, mtime_ns=mtime, status="ok")
    return row


def _extra_columns(table: pa.Table) -> dict[str, pa.Array]:
    """``caption`` and every other field but ``image_path`` as added columns; nested
    values as JSON text; names that clash with base columns get ``columns.CLASH_PREFIX``."""
    out: dict[str, pa.Array] = {}
    for name in table.column_names:
        if name == "image_path":
            continue
        col = table[name].combine_chunks()
        if pa.types.is_nested(col.type):
            col = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()])
        elif pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        out[column_name(name, out)] = col
    return out
