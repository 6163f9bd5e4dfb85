"""Committing a collection's state (format 2): the vector shard, then the new metadata
segment, tombstones and column segment, then the index and side files, then the manifest.

A checkpoint writes only what changed (its rows, the ids they kill, their vectors), so its
cost follows the batch, not the collection. A whole table handed to the writer (repair,
migration from format 1, tools) is written as one fresh segment instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmsearch.storage import integrity, metadata, segments
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.postings import PostingIndex
from vlmsearch.storage.column_vectors import TextVectors
from vlmsearch.storage.column_vectors import file_name as text_vectors_file
from vlmsearch.storage.compact import write_compacted
from vlmsearch.storage.layout import FORMAT_VERSION, Layout
from vlmsearch.storage.live import LiveView
from vlmsearch.storage.vectors import write_shard

# a pending row: the base columns and the generation of the content it describes
ROW_SCHEMA = pa.schema([*metadata.BASE_SCHEMA, pa.field("_since", pa.int64())])


class CollectionWriter:
    """Holds the pending changes of one run and commits them generation by generation."""

    def __init__(
        self, layout: Layout, manifest: dict[str, Any], table: pa.Table | None = None
    ) -> None:
        self.layout = layout
        self.manifest = manifest
        self.previous: dict[str, Any] | None = None
        # a whole table to commit in place of every segment (None: commit the batch)
        self._whole: pa.Table | None = table
        self._rows: dict[int, dict[str, Any]] = {}
        self._dead: set[int] = set()
        self._touched: dict[int, tuple[int, int]] = {}
        self._columns: list[tuple[np.ndarray, dict[str, pa.Array]]] = []
        self._view: LiveView | None = None

    # -- the committed state ------------------------------------------------------------------
    @property
    def view(self) -> LiveView:
        """The committed live rows (DuckDB over the segments), rebuilt after each commit."""
        if self._view is None or self._view.manifest is not self.manifest:
            if self._view is not None:
                self._view.close()
            # verified before any query (hashed once per process): damage is a one-line
            # error naming the file, not a failure inside DuckDB
            for name in segments.metadata_files(self.manifest):
                integrity.verify(self.layout.path, self.manifest, name)
            self._view = LiveView(self.layout.path, segments.as_format2(self.manifest))
        return self._view

    @property
    def table(self) -> pa.Table:
        """The whole state as one Arrow table: for repair and small tools, not hot paths."""
        if self._whole is not None:
            return self._whole
        t = self.view.table()
        if self._dead:
            t = metadata.drop_ids(t, list(self._dead))
        if self._rows:
            t = metadata.upsert(t, metadata.rows_to_table(list(self._rows.values())))
        return t

    @table.setter
    def table(self, table: pa.Table) -> None:
        self._whole = table

    def ok_ids(self) -> np.ndarray:
        """Sorted ids of the committed rows whose image decoded."""
        if self._whole is not None:
            return metadata.filter_ids(self._whole, None)
        return self.view.ok_ids()

    def largest_id(self) -> int | None:
        """The largest committed id (None when there is no row)."""
        if self._whole is not None:
            n = self._whole.num_rows
            return int(pc.max(self._whole["id"]).as_py()) if n else None
        return self.view.max_id()

    # -- pending changes ----------------------------------------------------------------------
    def upsert(self, rows: list[dict[str, Any]]) -> None:
        """New or re-encoded rows (base columns); a later one for an id wins."""
        for r in rows:
            self._rows[int(r["id"])] = r
            self._dead.discard(int(r["id"]))
            self._touched.pop(int(r["id"]), None)

    def delete(self, ids: list[int] | np.ndarray) -> None:
        for i in map(int, ids):
            self._rows.pop(i, None)
            self._touched.pop(i, None)
            self._dead.add(i)

    def touch(self, touched: dict[int, tuple[int, int]]) -> None:
        """Files with their old bytes and a new size/mtime: re-dated, not re-encoded."""
        self._touched.update(touched)

    def set_columns(self, ids: np.ndarray, columns: dict[str, pa.Array]) -> None:
        for name in columns:
            metadata.check_column_name(name)
        self._columns.append((np.asarray(ids, np.int64), columns))

    def pending(self) -> bool:
        """Changes not yet committed (a format-1 collection to migrate counts as one)."""
        return bool(
            self._whole is not None
            or self._rows
            or self._dead
            or self._touched
            or self._columns
            or _is_legacy(self.manifest)
        )

    def migrate(self) -> None:
        """Commit a format-1 collection's one table as a format-2 segment (its added
        columns as a column segment); vectors, index and ids are kept, nothing is
        encoded again. Changes pending here stay pending."""
        if not _is_legacy(self.manifest) or self._whole is not None:
            return
        saved = (self._rows, self._dead, self._touched, self._columns)
        self._rows, self._dead, self._touched, self._columns = {}, set(), {}, []
        self._whole = _legacy_table(self.layout, self.manifest)
        self.commit(data_changed=False)
        self._rows, self._dead, self._touched, self._columns = saved

    # -- commit -------------------------------------------------------------------------------
    def commit(
        self,
        shard: tuple[np.ndarray, np.ndarray] | None = None,
        index: Any = None,
        index_info: dict[str, Any] | None = None,
        replace_shards: bool = False,
        data_changed: bool = True,
        text_vectors: dict[str, tuple[TextVectors, dict[str, Any]]] | None = None,
        student: tuple[Any, dict[str, Any]] | None = None,
        compact: bool = False,
    ) -> None:
        """Write the new files, then the manifest. ``data_changed`` marks commits that
        change which vectors are live (the index is current iff it is at least as new);
        ``compact`` rewrites the committed metadata as one segment (storage/compact.py)."""
        self.migrate()  # a format-1 collection becomes format 2 first, in its own commit
        m = dict(self.manifest)
        gen = int(m.get("generation", 0)) + 1
        m["generation"] = gen
        m["format_version"] = FORMAT_VERSION
        m.pop("metadata_file", None)
        if data_changed:
            m["data_generation"] = gen
        if shard is not None and len(shard[0]):
            name = f"shard-{gen:06d}"
            write_shard(self.layout.vectors_dir, name, shard[0], shard[1])
            m["shards"] = ([] if replace_shards else list(m.get("shards", []))) + [name]
        if compact:
            if self.pending():
                raise ValueError("commit pending changes before compacting")
            m.update(write_compacted(self.layout, self.manifest, gen))
        elif self._whole is not None:
            self._commit_whole(m, gen, self._whole)
        else:
            self._commit_batch(m, gen)
        self._commit_side_files(m, gen, index, index_info, text_vectors, student)
        integrity.record(self.layout.path, m)  # sizes and digests of every named file
        self.layout.write_manifest(m, self.previous)
        self.previous, self.manifest = self.manifest, m
        self._whole = None
        self._rows, self._dead, self._touched, self._columns = {}, set(), {}, []

    def _commit_whole(self, m: dict[str, Any], gen: int, table: pa.Table) -> None:
        """Every row as one new segment (added columns as one column segment); the
        segments, tombstones and column segments named before are retired."""
        base, extra = _split_columns(table)
        name = segments.segment_name(gen)
        segments.write_segment(self.layout.file(name), base, gen, np.full(len(base), gen))
        m["segments"] = [
            {"file": name, "generation": gen, "rows": base.num_rows, **_id_range(base)}
        ]
        m["tombstones"], m["column_segments"] = [], []
        if extra.num_columns > 1:
            col = segments.column_segment_name(gen)
            segments.write_columns(self.layout.file(col), extra, gen)
            cols = [c for c in extra.column_names if c != "id"]
            m["column_segments"] = [{"file": col, "generation": gen, "columns": cols}]
        m["counts"] = _counts(table["status"])

    def _commit_batch(self, m: dict[str, Any], gen: int) -> None:
        """The pending rows as one segment, the ids they replace or delete as tombstones,
        pending column values as one column segment; counts updated from those alone."""
        view = self.view
        rows = self._batch_rows(view, gen)
        touched_or_new = [int(i) for i in rows["id"].to_pylist()] if rows is not None else []
        # ids above every committed segment's largest are new: nothing to look up or kill
        # (ids are never reused), so a checkpoint reads only the segments it replaces rows of
        top = segments.max_committed_id(m)
        affected = sorted(i for i in set(touched_or_new) | self._dead if top is None or i <= top)
        old = view.rows_for(affected, "id, status") if affected else None
        counts = dict(m.get("counts") or {"files": 0, "ok": 0, "error": 0})
        if old is not None and old.num_rows:
            tomb = segments.tombstone_name(gen)
            segments.write_tombstones(self.layout.file(tomb), old["id"].to_numpy(), gen)
            m["tombstones"] = segments.entries(m, "tombstones") + [
                {"file": tomb, "generation": gen, "rows": old.num_rows}
            ]
            counts = _add_counts(counts, _counts(old["status"]), -1)
        if rows is not None:
            name = segments.segment_name(gen)
            since = rows["_since"].to_numpy()
            base = rows.drop_columns(["_since"])
            segments.write_segment(self.layout.file(name), base, gen, since)
            m["segments"] = segments.entries(m, "segments") + [
                {"file": name, "generation": gen, "rows": rows.num_rows, **_id_range(rows)}
            ]
            counts = _add_counts(counts, _counts(rows["status"]), 1)
        m["counts"] = counts
        if self._columns:
            self._commit_columns(m, gen)

    def _batch_rows(self, view: LiveView, gen: int) -> pa.Table | None:
        """The pending base rows with their ``_since``: encoded rows are new content
        (``gen``); re-dated rows are the committed ones with a new size and mtime."""
        parts = []
        if self._rows:
            t = metadata.rows_to_table(list(self._rows.values()))
            parts.append(t.append_column("_since", pa.array(np.full(t.num_rows, gen, np.int64))))
        if self._touched:
            cols = ", ".join(f'"{c}"' for c in (*metadata.BASE_COLUMNS, "_since"))
            old = view.rows_for(sorted(self._touched), cols)
            if old.num_rows:
                ids = old["id"].to_pylist()
                size = pa.array([self._touched[i][0] for i in ids], pa.int64())
                mtime = pa.array([self._touched[i][1] for i in ids], pa.int64())
                old = old.set_column(old.column_names.index("size"), "size", size)
                old = old.set_column(old.column_names.index("mtime_ns"), "mtime_ns", mtime)
                parts.append(old.select(ROW_SCHEMA.names).cast(ROW_SCHEMA))
        if not parts:
            return None
        return pa.concat_tables(parts, promote_options="default")

    def _commit_columns(self, m: dict[str, Any], gen: int) -> None:
        tables = []
        for ids, columns in self._columns:
            tables.append(pa.table({"id": pa.array(ids, pa.int64()), **columns}))
        table = pa.concat_tables(tables, promote_options="default")
        name = segments.column_segment_name(gen)
        segments.write_columns(self.layout.file(name), table, gen)
        cols = [c for c in table.column_names if c != "id"]
        m["column_segments"] = segments.entries(m, "column_segments") + [
            {"file": name, "generation": gen, "columns": cols, "rows": table.num_rows}
        ]

    def _commit_side_files(
        self,
        m: dict[str, Any],
        gen: int,
        index: Any,
        index_info: dict[str, Any] | None,
        text_vectors: dict[str, tuple[TextVectors, dict[str, Any]]] | None,
        student: tuple[Any, dict[str, Any]] | None,
    ) -> None:
        if index is not None and index_info is not None:
            if hasattr(index, "commit_as"):  # on-disk: storage/ann/ondisk_files.py
                files = index.commit_as(self.layout.path, gen)
            elif isinstance(index, PostingIndex):
                files = {"file": f"index-{gen:06d}.postings.npz"}
                index.write(self.layout.file(files["file"]))
            else:
                files = {"file": f"index-{gen:06d}.faiss"}
                faiss_store.write_index(index, self.layout.file(files["file"]))
            m["index"] = {**index_info, **files, "generation": gen}
        if text_vectors:
            entries = dict(m.get("text_vectors") or {})
            for column, (tv, info) in text_vectors.items():
                name = text_vectors_file(gen, column)
                tv.write(self.layout.file(name))
                entries[column] = {**info, "file": name, "rows": len(tv), "generation": gen}
            m["text_vectors"] = entries
        if student is not None:  # a RegionStudent and its manifest entry
            name = f"student-{gen:06d}.pt"
            student[0].save(self.layout.file(name))
            m["region_student"] = {**student[1], "file": name, "generation": gen}


def _is_legacy(manifest: dict[str, Any]) -> bool:
    return int(manifest.get("format_version") or FORMAT_VERSION) < 2


def _legacy_table(layout: Layout, manifest: dict[str, Any]) -> pa.Table:
    """A format-1 collection's one metadata table: the first commit writes it as segments
    (the migration; vectors and index are kept as they are)."""
    name = manifest.get("metadata_file")
    if not name:
        return metadata.empty_table()
    return integrity.read_checked(layout.path, manifest, name, metadata.read_table)


def _id_range(rows: pa.Table) -> dict[str, int]:
    """The segment's largest id, recorded in its manifest entry (see _commit_batch)."""
    return {"max_id": int(pc.max(rows["id"]).as_py())} if rows.num_rows else {"max_id": -1}


def _split_columns(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The base columns (missing ones as nulls) and the added ones (with ``id``)."""
    n = table.num_rows
    have = set(table.column_names)
    base = pa.table(
        {
            f.name: table[f.name].cast(f.type) if f.name in have else pa.nulls(n, f.type)
            for f in metadata.BASE_SCHEMA
        }
    )
    extra = [c for c in table.column_names if c not in metadata.BASE_COLUMNS]
    return base, table.select(["id", *extra])


def _counts(status: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    n = len(status)
    ok = int(pc.sum(pc.equal(status, "ok")).as_py() or 0) if n else 0
    return {"files": n, "ok": ok, "error": n - ok}


def _add_counts(a: dict[str, int], b: dict[str, int], sign: int) -> dict[str, int]:
    return {k: int(a.get(k, 0)) + sign * int(b.get(k, 0)) for k in ("files", "ok", "error")}
