"""Compaction of a format-2 collection: the live rows of every metadata segment become
one segment, the newest value of every added column one column segment, and the
tombstones go (nothing is left for them to kill). Off the hot path, with the commit
rules of any other commit: new files first, the manifest last; the old files are retired
and deleted later, so a reader of the previous commit, or a kill -9 at any point, sees
either the old state or the new one.

DuckDB copies the rows from Parquet to Parquet: they never become Python objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmsearch.storage import metadata, segments
from vlmsearch.storage.atomic import atomic_write
from vlmsearch.storage.layout import Layout

# Compact once more files than this are named, or once the rows killed by tombstones
# pass half the live ones (plus a floor, so small collections are left alone): each
# segment is one more file a reader opens, each dead row one more row it reads.
MAX_FILES = 64
DEAD_FLOOR = 100_000


def needs_compaction(manifest: dict[str, Any]) -> bool:
    m = segments.as_format2(manifest)
    n_files = len(segments.files(m))
    dead = sum(int(e.get("rows", 0)) for e in segments.entries(m, "tombstones"))
    live = int((m.get("counts") or {}).get("files", 0))
    return n_files > MAX_FILES or dead > live // 2 + DEAD_FLOOR


def write_compacted(layout: Layout, manifest: dict[str, Any], gen: int) -> dict[str, Any]:
    """Write the compacted files of ``manifest``'s state as generation ``gen``; returns
    the manifest entries that name them (``segments``, ``tombstones``,
    ``column_segments``)."""
    import duckdb

    m = segments.as_format2(manifest)
    out: dict[str, Any] = {"segments": [], "tombstones": [], "column_segments": []}
    sql = segments.live_sql(layout.path, m)
    if sql is None:
        return out
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET threads = 1")
        con.execute(f"CREATE TEMP VIEW live AS {sql}")
        base = ", ".join(f'"{c}"' for c in metadata.BASE_COLUMNS)
        name = segments.segment_name(gen)
        rows = _copy(
            con,
            f"SELECT {base}, CAST({gen} AS BIGINT) AS _gen, CAST({gen} AS BIGINT) AS _since "
            "FROM live ORDER BY id",
            layout.file(name),
        )
        top = con.execute("SELECT coalesce(max(id), -1) FROM live").fetchone()[0]
        out["segments"] = [{"file": name, "generation": gen, "rows": rows, "max_id": int(top)}]
        cols = segments.column_names(m) or [
            c for c in _columns(con) if c not in metadata.BASE_COLUMNS
        ]
        if cols:
            picked = ", ".join(f'"{c}"' for c in cols)
            any_set = " OR ".join(f'"{c}" IS NOT NULL' for c in cols)
            col_name = segments.column_segment_name(gen)
            n = _copy(
                con,
                f"SELECT id, {picked}, CAST({gen} AS BIGINT) AS _cgen FROM live "
                f"WHERE {any_set} ORDER BY id",
                layout.file(col_name),
            )
            out["column_segments"] = [
                {"file": col_name, "generation": gen, "columns": cols, "rows": n}
            ]
    finally:
        con.close()
    return out


def _columns(con: Any) -> list[str]:
    return [r[0] for r in con.execute("DESCRIBE live").fetchall()]


def _copy(con: Any, select: str, path: Path) -> int:
    """``select`` into the Parquet file ``path`` (temp file, fsync, rename); its rows."""

    def write(tmp: Path) -> None:
        q = "'" + str(tmp).replace("'", "''") + "'"
        con.execute(
            f"COPY ({select}) TO {q} (FORMAT parquet, COMPRESSION zstd, "
            f"ROW_GROUP_SIZE {segments.ROW_GROUP_ROWS})"
        )

    atomic_write(path, write)
    return int(con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0])
