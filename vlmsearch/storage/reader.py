"""A read-only view of one committed state of a collection: manifest, metadata table,
vectors and index, each loaded on first use and verified as it is read.

Readers never fail because of a writer: when a newer commit has collected a file this
view still needed, the view moves to that commit (see :meth:`CollectionReader.load_current`)
and counts the move in :attr:`CollectionReader.moves`, which
:func:`vlmsearch.storage.snapshot.on_one_commit` watches.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from vlmsearch import names
from vlmsearch.errors import CollectionError
from vlmsearch.storage import integrity, metadata, segments, snapshot
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.ondisk_files import open_entry
from vlmsearch.storage.ann.plan import plan_index
from vlmsearch.storage.ann.postings import PostingIndex
from vlmsearch.storage.filter_budget import FilterBudget
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.vectors import VectorTable

T = TypeVar("T")


class CollectionReader:
    """The stored data of a collection as of one commit (newer ones are followed)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.manifest: dict[str, Any] = snapshot.read_snapshot(layout)
        self.filter_budget: FilterBudget | None = None  # None: no time limit (the server sets one)
        self.index_is_stale = False
        self.moves = 0  # times a lazy load moved this object to a newer commit
        # callers' caches that belong to one commit (text-column embeddings): dropped on a move
        self.commit_cache: dict[str, Any] = {}
        self._vectors: VectorTable | None = None
        self._index: Any = None
        # a table set by a caller stands for the committed rows (tests, tools)
        self._set_table: pa.Table | None = None
        # per committed state: the DuckDB copy of the live rows
        self._filter: metadata.MetadataFilter | None = None
        self._filter_key: Any = None

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def root(self) -> Path:
        return Path(self.manifest["root"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def sparse(self) -> bool:
        """Sparse vectors (ASIF): searched with posting lists instead of FAISS."""
        return self.manifest.get("vectors") == "sparse"

    def __len__(self) -> int:
        return int(self.manifest.get("counts", {}).get("ok", 0))

    def require_vectors(self) -> int:
        """The number of indexed images; refuses an empty collection with a hint."""
        n = len(self)
        if n == 0:
            raise CollectionError(
                f"collection {self.path} is empty: no image was indexed successfully "
                "(see `vlmsearch info`)"
            )
        return n

    def follow(self, manifest: dict[str, Any], table: pa.Table | None = None) -> None:
        """Read the commit this process has just made on top of this view's."""
        self.manifest, self._set_table = manifest, table

    @property
    def table(self) -> pa.Table:
        """Every live row as one Arrow table, ordered by id. Built on first use from the
        DuckDB copy; search, filters and lookups do not need it (they query the copy)."""
        if self._set_table is not None:
            return self._set_table
        return self.metadata_filter().table

    @table.setter
    def table(self, table: pa.Table) -> None:
        self._set_table = table

    @property
    def column_names(self) -> list[str]:
        if self._set_table is not None:
            return self._set_table.column_names
        return self.metadata_filter().column_names

    def column_types(self) -> dict[str, pa.DataType]:
        """Every column's Arrow type, in table order (as :attr:`table` has them), from a
        zero-row query: no row is read."""
        if self._set_table is not None:
            schema = self._set_table.schema
        else:
            empty = self.metadata_filter().select(f"SELECT * FROM {metadata.TABLE_NAME} LIMIT 0")
            schema = metadata.as_stored(empty).schema
        return {f.name: f.type for f in schema}

    @property
    def state(self) -> tuple[Any, ...]:
        """The objects that stand for this view's committed state (its manifest, and a
        table set by a caller). A cache of one state keeps them and compares them by
        identity (:meth:`same_state`): held, they cannot be mistaken for a newer state."""
        return (self.manifest, self._set_table)

    def same_state(self, state: tuple[Any, ...]) -> bool:
        """Whether ``state`` (an earlier :attr:`state`) is this view's state still."""
        return len(state) == len(self.state) and all(
            a is b for a, b in zip(state, self.state, strict=True)
        )

    def _state_key(self) -> Any:
        return (id(self._set_table), self.manifest.get("generation"), id(self.manifest))

    def metadata_filter(self) -> metadata.MetadataFilter:
        """DuckDB over the live rows of this view's commit, made once per commit: a copy
        of small collections (~0.3-1.3 s a million rows), a view over the Parquet
        segments of big ones (see :class:`metadata.MetadataFilter`)."""
        key = self._state_key()
        if self._filter is None or self._filter_key != key:
            if self._filter is not None:
                self._filter.close()
            self._filter = self.load_current(self._build_filter)
            self._filter_key = self._state_key()
        return self._filter

    def _build_filter(self) -> metadata.MetadataFilter:
        import duckdb

        if self._set_table is not None:
            return metadata.MetadataFilter(self._set_table, self.filter_budget)
        m = segments.as_format2(self.manifest)
        sql = segments.live_sql(self.layout.path, m)
        if sql is None:
            return metadata.MetadataFilter(metadata.empty_table(), self.filter_budget)
        rows = int((m.get("counts") or {}).get("files", 0))
        files = None
        if rows > metadata.COPY_MAX_ROWS:  # queried in place: see MetadataFilter
            files = [str(self.layout.file(f)) for f in segments.files(m)]
        try:
            return metadata.MetadataFilter(sql, self.filter_budget, in_place=files)
        except duckdb.IOException as e:
            # a file gone (collected after a newer commit, or lost): name the first missing
            # one, so that load_current moves to the newer commit or the damage is named
            for name in segments.files(m):
                integrity.verify(self.layout.path, self.manifest, name)
            raise CollectionError(
                f"cannot read the metadata of {self.path}: {str(e).splitlines()[0]}; "
                f"{integrity.repair_hint(self.path)}"
            ) from None

    @property
    def loaded_filter(self) -> metadata.MetadataFilter | None:
        """The DuckDB copy of the metadata, if one was built (not building one)."""
        return self._filter

    @property
    def loaded_vectors(self) -> VectorTable | None:
        """The vector table, if it was read (not reading it)."""
        return self._vectors

    # -- metadata -------------------------------------------------------------------------------
    def live_ids(self) -> np.ndarray:
        return self.filter_ids(None)

    def filter_ids(self, where: str | None, null_columns: Sequence[str] = ()) -> np.ndarray:
        """Sorted ids of the 'ok' rows satisfying ``where``, from the DuckDB copy;
        ``null_columns``: text columns not there yet, null in every row (see
        :meth:`metadata.MetadataFilter.ids`)."""
        return self.metadata_filter().ids(where, null_columns=null_columns)

    def rows(self, ids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        """Metadata rows by id, from the DuckDB copy (sorted by id: its zone maps skip
        all but the row groups holding them)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return {}
        t = metadata.TABLE_NAME
        unique = np.unique(ids).tolist()
        if len(unique) <= 64:
            # one equality each: the zone maps of the id-sorted copy skip all but one row
            # group (1M rows, 10 ids: ~8 ms; an IN list scans the column, ~25 ms)
            sql = " UNION ALL ".join(f"SELECT * FROM {t} WHERE id = {i}" for i in unique)
        else:
            lo, hi = unique[0], unique[-1]
            sql = (
                f"SELECT * FROM {t} WHERE id BETWEEN {lo} AND {hi} "
                f"AND id IN {segments.ids_sql(unique)}"
            )
        return {r["id"]: r for r in self.metadata_filter().select(sql).to_pylist()}

    def lookup_file(self, path: str | Path) -> int | None:
        """The id of the image at ``path`` if it is indexed and unchanged since (same size
        and mtime), so that its stored vector stands for it; otherwise None."""
        p = Path(path).expanduser().resolve()
        try:
            rel = p.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return None
        sql = f"SELECT * FROM {metadata.TABLE_NAME} WHERE path = ?"
        rows = self.metadata_filter().select(sql, [names.readable(rel)]).to_pylist()
        rows = [r for r in rows if names.row_path(r) == rel]
        if not rows or rows[0]["status"] != "ok":
            return None
        st = p.stat()
        if st.st_size != rows[0]["size"] or st.st_mtime_ns != rows[0]["mtime_ns"]:
            return None
        return int(rows[0]["id"])

    # -- vectors and index --------------------------------------------------------------------
    def read_verified(self, name: str, reader: Callable[[Path], T]) -> T:
        """``reader(path)`` of a file the manifest names, verified first (see
        :mod:`vlmsearch.storage.integrity`): damage is a one-line CollectionError."""
        return integrity.read_checked(self.layout.path, self.manifest, name, reader)

    @property
    def vectors(self) -> VectorTable:
        if self._vectors is None:

            def load() -> VectorTable:
                for shard in self.manifest.get("shards", []):
                    for name in integrity.shard_files(shard, self.sparse):
                        integrity.verify(self.layout.path, self.manifest, name)
                return VectorTable.load(
                    self.layout.vectors_dir,
                    self.manifest.get("shards", []),
                    self.dim,
                    self.live_ids(),
                    sparse=self.sparse,
                )

            self._vectors = self.load_current(load)
        return self._vectors

    @property
    def faiss_index(self) -> Any:
        """The stored index; an in-memory exact index when the stored one is behind the data
        (an interrupted run that had not reached its index step)."""
        if self._index is None:
            self._index = self.load_current(self._read_index)
        return self._index

    def _read_index(self) -> Any:
        info = self.manifest.get("index") or {}
        current = info.get("file") and int(info.get("generation", -1)) >= int(
            self.manifest.get("data_generation", 0)
        )
        if current:
            path = self.layout.file(info["file"])
            if path.is_file() and info.get("ondisk") and not self.sparse:
                return self._open_ondisk(info)
            if path.is_file():
                # verified first: a damaged index is a one-line error naming it
                reader = PostingIndex.read if self.sparse else faiss_store.read_index
                return self.read_verified(info["file"], reader)
            if snapshot.newer_manifest(self.layout, self.manifest) is not None:
                raise FileNotFoundError(errno.ENOENT, "collected by a newer commit", str(path))
        # no index, or one behind the data (or deleted): exact search over the vectors
        self.index_is_stale = True
        vt = self.vectors
        if self.sparse:
            return PostingIndex.build(vt.ids, vt.vectors)
        plan = plan_index("flat", len(vt), self.dim)
        return faiss_store.build_index(plan, self.dim, vt.ids, vt.vectors.astype(np.float32))

    def _open_ondisk(self, info: dict[str, Any]) -> Any:
        """An on-disk index, its lists memory-mapped (checked by size; the small files
        by digest): opening reads the header, never the lists."""

        def verify(name: str, digest: bool) -> Path:
            return integrity.verify(self.layout.path, self.manifest, name, digest)

        with integrity.reading(self.layout.file(info["file"]), self.layout.path):
            return open_entry(self.layout.path, info, verify)

    def load_current(self, load: Callable[[], T]) -> T:
        """``load()`` from this object's commit; when a newer commit has since collected a
        file it needs, this object moves to that commit (manifest, table, caches) and
        loads again: a reader never fails because of a writer."""
        for _ in range(snapshot.ATTEMPTS):
            try:
                return load()
            except (FileNotFoundError, integrity.MissingFileError):
                newer = snapshot.reread(self.layout, self.manifest)
                if newer is None:
                    raise
                self.manifest, self._set_table = newer, None
                self.moves += 1
                self._vectors = self._index = None
                self.commit_cache.clear()
                self.index_is_stale = False
        return load()

    # -- summary ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What ``vlmsearch info`` shows: the manifest's settings, counts and index, the
        extra columns, and the bytes on disk by file kind."""
        sizes: dict[str, int] = {}
        total = 0
        for p in self.layout.path.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                kind = p.name.split("-")[0] if "-" in p.name else p.name
                sizes[kind] = sizes.get(kind, 0) + p.stat().st_size
                total += p.stat().st_size
        m = self.manifest
        idx = m.get("index") or {}
        return {
            "collection": str(self.path),
            "root": m.get("root"),
            "format_version": m.get("format_version"),
            "vlmsearch_version": m.get("vlmsearch_version"),
            "encoder": m.get("encoder"),
            "encoder_choice": m.get("encoder_choice"),
            "calibration": m.get("calibration"),  # one fitted on the user's captions
            "dim": m.get("dim"),
            "metric": m.get("metric"),
            # the image tower's arithmetic (index --precision; fp32 before it existed)
            "precision": m.get("precision", "fp32"),
            "encoded_by": (m.get("ingest") or {}).get("executor"),
            "preprocessing": m.get("preprocessing"),
            "counts": m.get("counts"),
            "index": {
                k: idx.get(k) for k in ("requested", "factory", "search_params", "ntotal", "reason")
            },
            "index_current": bool(idx)
            and int(idx.get("generation", -1)) >= int(m.get("data_generation", 0)),
            "columns": [c for c in self.column_names if c not in metadata.BASE_COLUMNS],
            "text_vectors": {
                col: {"rows": e.get("rows"), "encoder": e.get("encoder_name")}
                for col, e in (m.get("text_vectors") or {}).items()
            },
            "generation": m.get("generation"),
            "created_at": m.get("created_at"),
            "updated_at": m.get("updated_at"),
            "bytes_on_disk": {"total": total, **sizes},
        }
