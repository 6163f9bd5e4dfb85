"""Per-file metadata as a Parquet table, filtered with DuckDB SQL.

One row per scanned file. The base columns are fixed; later features (labels,
captions) add columns, which are carried through incremental updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlmsearch.errors import QueryError
from vlmsearch.storage.atomic import atomic_write
from vlmsearch.storage.filter_budget import FilterBudget, QueryRunner, configure, describe_error
from vlmsearch.storage.where_check import validate_where

BASE_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("content_hash", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("indexed_at", pa.timestamp("us", tz="UTC")),
        # the exact bytes of a name that is not valid UTF-8 (null otherwise); ``path`` then
        # holds it with \xNN escapes (vlmsearch.names)
        ("path_bytes", pa.binary()),
    ]
)
BASE_COLUMNS = tuple(BASE_SCHEMA.names)
TABLE_NAME = "metadata"


def empty_table() -> pa.Table:
    return BASE_SCHEMA.empty_table()


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=BASE_SCHEMA)


def as_stored(table: pa.Table) -> pa.Table:
    """A table from DuckDB with the base columns' stored types (DuckDB names the UTC
    zone ``Etc/UTC``, which Arrow will not merge with ``UTC``)."""
    for n, f in enumerate(table.schema):
        if f.name in BASE_COLUMNS:
            want = BASE_SCHEMA.field(f.name).type
            if f.type != want:
                table = table.set_column(n, f.name, table[f.name].cast(want))
    return table


def read_table(path: Path) -> pa.Table:
    # page checksums catch damage inside a page even where the manifest has no digest
    return pq.read_table(path, page_checksum_verification=True)


def check_parquet(path: Path) -> None:
    """Read a Parquet file through, page checksums verified (it stays on disk)."""
    f = pq.ParquetFile(path, page_checksum_verification=True)
    for i in range(f.num_row_groups):
        f.read_row_group(i)


def write_table(path: Path, table: pa.Table) -> None:
    atomic_write(
        path,
        lambda p: pq.write_table(table, p, compression="zstd", write_page_checksum=True),
    )


def drop_ids(table: pa.Table, ids: np.ndarray | list[int]) -> pa.Table:
    if len(ids) == 0 or table.num_rows == 0:
        return table
    mask = pc.is_in(table["id"], value_set=pa.array(np.asarray(ids, np.int64)))
    return table.filter(pc.invert(mask))


def upsert(table: pa.Table, new_rows: pa.Table) -> pa.Table:
    """Replace rows with the same ids and append the rest (extra columns become null)."""
    if new_rows.num_rows == 0:
        return table
    kept = drop_ids(table, new_rows["id"].to_numpy())
    merged = pa.concat_tables([kept, new_rows], promote_options="default")
    return merged.sort_by("id")


def check_column_name(name: str) -> None:
    """Refuse names that would replace a built-in column or need SQL quoting."""
    if name in BASE_COLUMNS:
        raise QueryError(f"column {name!r} is built in; choose another name")
    if not name.isidentifier():
        raise QueryError(f"column name {name!r} must be a plain identifier (letters, digits, _)")


def quote_name(name: str) -> str:
    """``name`` as a SQL identifier: in double quotes, any double quote doubled."""
    return '"' + name.replace('"', '""') + '"'


def set_column(table: pa.Table, name: str, ids: np.ndarray, values: pa.Array) -> pa.Table:
    """Set column ``name`` for the rows with ``ids`` (others keep their value, or null)."""
    check_column_name(name)
    all_ids = table["id"].to_numpy()
    order = np.argsort(ids)
    sorted_ids = np.asarray(ids)[order]
    pos = np.searchsorted(sorted_ids, all_ids)
    pos_clipped = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
    hit = (
        (pos < len(sorted_ids)) & (sorted_ids[pos_clipped] == all_ids)
        if len(ids)
        else (np.zeros(len(all_ids), bool))
    )
    taken = values.take(pa.array(order[pos_clipped])) if len(ids) else pa.nulls(len(all_ids))
    if name in table.column_names:
        old = table[name].combine_chunks()
        if old.type != values.type:
            old = pa.nulls(len(old), values.type)
        column = pc.if_else(pa.array(hit), taken.cast(values.type), old)
        return table.set_column(table.column_names.index(name), name, column)
    column = pc.if_else(pa.array(hit), taken.cast(values.type), pa.nulls(len(all_ids), values.type))
    return table.append_column(name, column)


def filter_ids(
    table: pa.Table, where: str | None, only_ok: bool = True, budget: FilterBudget | None = None
) -> np.ndarray:
    """Ids of the rows satisfying ``where`` (a SQL boolean over the metadata columns).

    A one-off :class:`MetadataFilter`; callers that filter repeatedly keep one instead."""
    with MetadataFilter(table, budget) as f:
        return f.ids(where, only_ok)


# Segments of up to this many live rows are copied into DuckDB (fast filters, about
# 440 bytes of RAM a row); above it they are queried in place. The on-disk index rule
# starts at the same size (storage/ann/plan.py).
COPY_MAX_ROWS = 2_000_000


class MetadataFilter:
    """A private DuckDB database answering filters and lookups over one metadata table.

    Two modes. **Copy** (an Arrow table, or segments up to :data:`COPY_MAX_ROWS` rows):
    the rows are copied once into DuckDB's own storage. Opening a connection costs about
    20 ms and scanning a registered Arrow table converts its string columns on every query
    (~20 ms at 1M rows); a native copy made once (~0.3 s at 1M rows) answers a filter in a
    few ms (benchmarks/RESULTS.md, issue 6). **In place** (bigger collections): the table
    is a view over the Parquet segments, read by each query; nothing is copied, so opening
    costs nothing and memory stays flat (10M rows: a copy took 12.8 s and 4.3 GB, a 1%
    filter in place 0.33 s, a lookup by path 0.07 s; benchmarks/RESULTS.md).

    External access is disabled and the configuration locked, so a filter can read nothing
    but this table (in place: only the collection's own metadata files are allowed).
    Queries run within ``budget`` (time, memory, a few at a time, one thread each) and stop
    on Ctrl-C: see :mod:`vlmsearch.storage.filter_budget`."""

    def __init__(
        self,
        source: pa.Table | str,
        budget: FilterBudget | None = None,
        in_place: Sequence[str] | None = None,
    ) -> None:
        """``source``: an Arrow table, or the SQL of a collection's live rows (format 2:
        a SELECT over its Parquet segments, read into DuckDB's own storage, never into
        Python objects). ``in_place``: the files ``source`` reads, to query it as a view
        over them instead of copying it."""
        import duckdb

        self._table = source if isinstance(source, pa.Table) else None
        self.budget = budget or FilterBudget()
        self.in_place = in_place is not None and not isinstance(source, pa.Table)
        self._con = duckdb.connect(":memory:")
        try:
            if isinstance(source, pa.Table):
                self._con.register("_arrow", source)
                self._con.execute(f"CREATE TABLE {TABLE_NAME} AS SELECT * FROM _arrow")
                self._con.unregister("_arrow")
            elif self.in_place:
                self._con.execute(f"CREATE VIEW {TABLE_NAME} AS {source}")
                allowed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in in_place or [])
                self._con.execute(f"SET allowed_paths = [{allowed}]")
                # footers parsed once, not per query: a lookup by id at 10M rows 50 -> 20 ms
                self._con.execute("SET parquet_metadata_cache = true")
            else:
                # sorted by id: row-group zone maps then make lookups by id cheap
                self._con.execute(
                    f"CREATE TABLE {TABLE_NAME} AS SELECT * FROM ({source}) ORDER BY id"
                )
            self.column_names: list[str] = [
                r[0] for r in self._con.execute(f"DESCRIBE {TABLE_NAME}").fetchall()
            ]
            # one thread per query: a filter over 1M rows takes ~3 ms either way, and a
            # second thread only waits for a core on a busy machine
            configure(self._con, self.budget)
            self._con.execute("SET enable_external_access = false")
            self._con.execute("SET lock_configuration = true")
        except BaseException as e:
            self._con.close()
            if _interrupted(e):
                # Ctrl-C while the table is copied: DuckDB turns it into its own error,
                # which would print a traceback instead of the CLI's one line
                raise KeyboardInterrupt from None
            raise
        self._runner = QueryRunner(self._con, self.budget)

    @property
    def table(self) -> pa.Table:
        """Every row as one Arrow table, ordered by id (made on first use when the rows
        were read from Parquet segments: for small collections and tools)."""
        if self._table is None:
            self._table = as_stored(self.select(f"SELECT * FROM {TABLE_NAME} ORDER BY id"))
        return self._table

    def select(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """vlmsearch's own query over the table (lookups by id or path), as Arrow."""
        cur = self._con.cursor()
        try:
            return cur.sql(sql, params=params or None).to_arrow_table()
        finally:
            cur.close()

    def __enter__(self) -> MetadataFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.close()

    def ids(
        self, where: str | None, only_ok: bool = True, null_columns: Sequence[str] = ()
    ) -> np.ndarray:
        """Sorted unique ids of the rows satisfying ``where`` (and status 'ok').

        ``null_columns``: text columns the table does not have (yet), which ``where`` may
        name: null in every row (the first run of ``--where "caption IS NULL"
        --write-column caption``)."""
        import duckdb

        extra = [c for c in null_columns if c not in self.column_names]
        columns = [*self.column_names, *extra]
        if where and where.strip():
            validate_where(where, columns)
        clauses = []
        if only_ok:
            clauses.append("status = 'ok'")
        if where and where.strip():
            clauses.append(f"({where})")
        source = TABLE_NAME
        if extra:
            nulls = ", ".join(f"CAST(NULL AS VARCHAR) AS {quote_name(c)}" for c in extra)
            source = f"(SELECT *, {nulls} FROM {TABLE_NAME}) AS {TABLE_NAME}"
        sql = f"SELECT id FROM {source}" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
        try:
            result = self._runner.fetchnumpy(sql)
        except duckdb.BinderException as e:
            raise QueryError(
                f"invalid where filter {where!r}: {describe_error(e)} "
                f"(columns: {', '.join(columns)})"
            ) from None
        except duckdb.Error as e:
            raise QueryError(f"invalid where filter {where!r}: {describe_error(e)}") from None
        if len(result) != 1:
            raise QueryError(f"invalid where filter {where!r}")
        col = next(iter(result.values()))
        if not np.issubdtype(col.dtype, np.integer):
            raise QueryError(f"invalid where filter {where!r}")
        ids = np.asarray(col, dtype=np.int64)
        # rows come back in table order, which is id order for tables written by upsert
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids = np.unique(ids)
        return ids


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` is DuckDB reporting a query stopped by Ctrl-C (its own exception
    type, or a RuntimeError "Query interrupted" when the signal reached Python first)."""
    import duckdb  # imported lazily, as above

    if isinstance(e, duckdb.InterruptException):
        return True
    return isinstance(e, RuntimeError) and "query interrupted" in str(e).lower()
