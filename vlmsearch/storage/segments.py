"""The metadata of a format-2 collection: immutable segments, tombstones and column
segments, and the SQL that reads their union as one table.

A commit never rewrites what is committed; it appends files:

- a **segment** (``seg-000012.parquet``): metadata rows written by one commit, the base
  columns plus two hidden ones, ``_gen`` (the generation that wrote the row) and
  ``_since`` (the generation whose file contents the row describes: a re-dated file keeps
  its old ``_since``, a re-encoded one gets a new one);
- a **tombstone** file (``tomb-000012.parquet``): ids (``id``, ``_tgen``) whose rows in
  *older* segments are dead, deleted files and replaced rows alike;
- a **column segment** (``col-000013.parquet``): values of added columns (labels,
  captions) keyed by id, with ``_cgen``, the generation that wrote them.

A row is live when no tombstone newer than its ``_gen`` names its id. An added column's
value for a row is the newest one written at or after the row's ``_since`` (a re-encoded
image loses its old label, a re-dated one keeps it). Hidden columns start with ``_``.
Compaction (``storage/compact.py``) rewrites the live rows into one segment; the rules
above hold unchanged over its output, because every row keeps its own generations.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmsearch.storage.atomic import atomic_write

HIDDEN = ("_gen", "_since")
KINDS = ("segments", "tombstones", "column_segments")


def segment_name(gen: int) -> str:
    return f"seg-{gen:06d}.parquet"


def tombstone_name(gen: int) -> str:
    return f"tomb-{gen:06d}.parquet"


def column_segment_name(gen: int) -> str:
    return f"col-{gen:06d}.parquet"


def entries(manifest: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(manifest.get(kind) or [])


def files(manifest: dict[str, Any]) -> list[str]:
    """Every metadata file a format-2 manifest names (for checksums and retirement)."""
    return [str(e["file"]) for kind in KINDS for e in entries(manifest, kind)]


# Rows per Parquet row group: a lookup by id or path reads one group per segment (its
# statistics rule out the others), so smaller groups make lookups in big segments cheaper;
# pyarrow's default (1M rows) made one lookup at 10M rows cost ~56 ms.
ROW_GROUP_ROWS = 65_536


def _write(path: Path, table: pa.Table) -> None:
    # page checksums catch damage inside a page even where the manifest has no digest
    atomic_write(
        path,
        lambda p: pq.write_table(
            table, p, compression="zstd", write_page_checksum=True, row_group_size=ROW_GROUP_ROWS
        ),
    )


def write_segment(path: Path, rows: pa.Table, gen: int, since: np.ndarray) -> None:
    """The base rows of one commit, sorted by id (row-group statistics then skip most of
    a segment in id lookups), with their hidden generations."""
    rows = rows.append_column("_gen", pa.array(np.full(rows.num_rows, gen, np.int64)))
    rows = rows.append_column("_since", pa.array(np.asarray(since, np.int64)))
    _write(path, rows.sort_by("id"))


def write_tombstones(path: Path, ids: np.ndarray, gen: int) -> None:
    ids = np.unique(np.asarray(ids, np.int64))
    _write(path, pa.table({"id": ids, "_tgen": np.full(len(ids), gen, np.int64)}))


def write_columns(path: Path, table: pa.Table, gen: int | np.ndarray) -> None:
    """Added-column values keyed by ``id`` (``table`` holds ``id`` and the columns)."""
    cgen = np.broadcast_to(np.asarray(gen, np.int64), (table.num_rows,)).copy()
    _write(path, table.append_column("_cgen", pa.array(cgen)).sort_by("id"))


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _segment_select(base: Path, entry: dict[str, Any]) -> str:
    src = f"read_parquet({_quote(base / entry['file'])})"
    if entry.get("legacy"):
        # a format-1 metadata file read in place: one segment as old as the collection;
        # its added columns are inline and pass through as they are
        return f"SELECT *, CAST(0 AS BIGINT) AS _gen, CAST(0 AS BIGINT) AS _since FROM {src}"
    return f"SELECT * FROM {src}"


def live_sql(base: Path, manifest: dict[str, Any], hidden: bool = False) -> str | None:
    """A SELECT over the live rows with every added column, or None when the manifest
    names no segment. ``hidden`` keeps ``_gen`` and ``_since`` (writers need them)."""
    segs = entries(manifest, "segments")
    if not segs:
        return None
    union = " UNION ALL BY NAME ".join(_segment_select(base, e) for e in segs)
    sql = f"SELECT * FROM ({union}) b"
    tombs = entries(manifest, "tombstones")
    if tombs:
        # an ANTI JOIN, not NOT EXISTS: DuckDB then pushes a query's filters (id = N,
        # path = ?, width >= W) into each segment's scan, so row-group statistics skip
        # most of it; the correlated form read every row first (10M rows: 0.06 s for a
        # path lookup against 2.7 s, benchmarks/RESULTS.md)
        tlist = ", ".join(_quote(base / e["file"]) for e in tombs)
        sql = (
            f"SELECT b.* FROM ({union}) b ANTI JOIN read_parquet([{tlist}]) t"
            " ON t.id = b.id AND t._tgen > b._gen"
        )
    return _with_columns(base, manifest, sql, hidden)


def column_names(manifest: dict[str, Any]) -> list[str]:
    """Added columns, in the order they were first written."""
    out: list[str] = []
    for e in entries(manifest, "column_segments"):
        for c in e.get("columns", []):
            if c not in out:
                out.append(c)
    return out


def _with_columns(base: Path, manifest: dict[str, Any], rows_sql: str, hidden: bool) -> str:
    """Join each added column's newest value (at or after the row's ``_since``)."""
    joins, picks = [], []
    for n, col in enumerate(column_names(manifest)):
        srcs = [
            _quote(base / e["file"])
            for e in entries(manifest, "column_segments")
            if col in e.get("columns", [])
        ]
        sub = " UNION ALL BY NAME ".join(
            f'SELECT id, "{col}" AS v, _cgen FROM read_parquet({s})' for s in srcs
        )
        alias = f"c{n}"
        joins.append(
            f" LEFT JOIN (SELECT * FROM ({sub}) QUALIFY row_number() OVER "
            f"(PARTITION BY id ORDER BY _cgen DESC) = 1) {alias} "
            f"ON {alias}.id = r.id AND {alias}._cgen >= r._since"
        )
        picks.append(f'{alias}.v AS "{col}"')
    inline = "r.*" if hidden else "r.* EXCLUDE (_gen, _since)"
    select = ", ".join([inline, *picks])
    return f"SELECT {select} FROM ({rows_sql}) r{''.join(joins)}"


def legacy_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest seen as format 2: its one metadata file is one legacy segment."""
    view = dict(manifest)
    name = manifest.get("metadata_file")
    view["segments"] = [{"file": name, "generation": 0, "legacy": True}] if name else []
    view["tombstones"], view["column_segments"] = [], []
    return view


def as_format2(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as format 2 sees it (a format-1 one through :func:`legacy_view`)."""
    if int(manifest.get("format_version") or 2) < 2:
        return legacy_view(manifest)
    return manifest


def metadata_files(manifest: dict[str, Any]) -> list[str]:
    """The metadata files of a committed state, of either format."""
    return files(as_format2(manifest))


def max_committed_id(manifest: dict[str, Any]) -> int | None:
    """The largest id any segment holds, from the ``max_id`` of the segment entries;
    None when an entry lacks it (segments written before it was recorded, format 1)."""
    segs = entries(as_format2(manifest), "segments")
    if any("max_id" not in e for e in segs):
        return None
    return max((int(e["max_id"]) for e in segs), default=-1)


def ids_sql(ids: Iterable[int]) -> str:
    """A literal list of ids for an IN clause (ids are integers: no quoting issue)."""
    return "(" + ",".join(str(int(i)) for i in ids) + ")" if ids else "(NULL)"
