"""Queries over the committed rows of a format-2 collection, straight from its Parquet
files through DuckDB: nothing is loaded into Python beyond what a query returns.

Writers use this to find rows by id or path, count statuses and diff a scan; its SQL is
vlmsearch's own (a user's ``--where`` goes through :class:`metadata.MetadataFilter`,
which is locked down).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlmsearch.storage import metadata, segments


class LiveView:
    """The live rows of one manifest's segments (hidden generations included)."""

    def __init__(self, base: Path, manifest: dict[str, Any]) -> None:
        import duckdb

        self.base = base
        self.manifest = manifest
        self.sql = segments.live_sql(base, manifest, hidden=True)
        self._con = duckdb.connect(":memory:")
        self._con.execute("SET threads = 1")
        self._con.execute("SET parquet_metadata_cache = true")  # footers parsed once

    def close(self) -> None:
        self._con.close()

    def arrow(self, select: str, where: str | None = None, tail: str = "") -> pa.Table:
        """``SELECT select FROM live [WHERE where] tail`` as an Arrow table."""
        if self.sql is None:
            return _empty(select)
        sql = f"SELECT {select} FROM ({self.sql}) live"
        if where:
            sql += f" WHERE {where}"
        return self._con.sql(sql + tail).to_arrow_table()

    def table(self, hidden: bool = False) -> pa.Table:
        """Every live row, ordered by id: only for small collections and compatibility."""
        t = self.arrow("*", tail=" ORDER BY id")
        if t.num_rows == 0 and not t.column_names:
            return metadata.empty_table()
        if not hidden:
            t = t.drop_columns([c for c in segments.HIDDEN if c in t.column_names])
        return metadata.as_stored(t)

    def rows_for(self, ids: np.ndarray | list[int], columns: str = "*") -> pa.Table:
        ids = np.unique(np.asarray(ids, np.int64))
        if len(ids) <= 4096:
            where = f"id IN {segments.ids_sql(ids.tolist())}"
            return metadata.as_stored(self.arrow(columns, where))
        # a big delete: the ids as a table to join, not an SQL literal of millions
        self._con.register("wanted", pa.table({"id": ids}))
        try:
            where = f"id BETWEEN {ids[0]} AND {ids[-1]} AND id IN (SELECT id FROM wanted)"
            return metadata.as_stored(self.arrow(columns, where))
        finally:
            self._con.unregister("wanted")

    def ok_ids(self) -> np.ndarray:
        t = self.arrow("id", "status = 'ok'", " ORDER BY id")
        return t["id"].to_numpy() if t.num_rows else np.zeros(0, np.int64)

    def status_counts(self, ids: np.ndarray | list[int] | None = None) -> dict[str, int]:
        where = None if ids is None else f"id IN {segments.ids_sql(list(map(int, ids)))}"
        if ids is not None and len(ids) == 0:
            return {}
        t = self.arrow("status, count(*) AS n", where, " GROUP BY status")
        return {r["status"]: int(r["n"]) for r in t.to_pylist()} if t.num_rows else {}

    def max_id(self) -> int | None:
        t = self.arrow("max(id) AS m")
        return None if t.num_rows == 0 else t["m"][0].as_py()

    def join_scan(self, scan: pa.Table) -> pa.Table:
        """The committed rows joined to a scan (``path``, ``path_bytes``, ``size``,
        ``mtime_ns``) on the file's identity: one row per scanned file that is new or
        differs in size or mtime, with the committed ``id``, ``size``, ``content_hash``
        and ``status`` (null for new files). Done in DuckDB, not Python."""
        if self.sql is None:
            return scan.append_column("id", pa.nulls(scan.num_rows, pa.int64()))
        self._con.register("scan", scan)
        try:
            return self._con.sql(
                f"SELECT s.path, s.path_bytes, s.size, s.mtime_ns, l.id, l.size AS old_size, "
                f"l.content_hash, l.status FROM scan s LEFT JOIN ({self.sql}) l "
                "ON l.path = s.path AND l.path_bytes IS NOT DISTINCT FROM s.path_bytes "
                "WHERE l.id IS NULL OR l.size <> s.size OR l.mtime_ns <> s.mtime_ns"
            ).to_arrow_table()
        finally:
            self._con.unregister("scan")

    def gone(self, scan: pa.Table) -> pa.Table:
        """Committed rows (``id``, ``path``, ``path_bytes``) whose file the scan lacks."""
        if self.sql is None:
            return pa.table(
                {
                    "id": pa.array([], pa.int64()),
                    "path": pa.array([], pa.string()),
                    "path_bytes": pa.array([], pa.binary()),
                }
            )
        self._con.register("scan", scan)
        try:
            return self._con.sql(
                f"SELECT l.id, l.path, l.path_bytes FROM ({self.sql}) l WHERE NOT EXISTS "
                "(SELECT 1 FROM scan s WHERE s.path = l.path "
                "AND s.path_bytes IS NOT DISTINCT FROM l.path_bytes)"
            ).to_arrow_table()
        finally:
            self._con.unregister("scan")


def _empty(select: str) -> pa.Table:
    if select.strip() == "*":
        return metadata.empty_table()
    return pa.table({})
