"""Parquet files with an image column (Hugging Face datasets, img2dataset's ``parquet``
output): one item per row, the other columns carried into the metadata.

The image column holds bytes, a Hugging Face ``{bytes, path}`` struct, or a path string
resolved against a base folder (default: the Parquet file's folder). An item's member is
the row's ``key`` column (img2dataset) when that is unique, else its row number. A file
with no such column is not a dataset: in a folder it is skipped (img2dataset writes a
metadata-only ``NNNNN.parquet`` beside each tar), named on the command line it is an error.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vlmsearch.imaging.scan import ScannedFile

KEY_COLUMN = "key"
_BATCH = 1024  # rows read at a time while listing (bounded memory for image bytes)
_CACHE_FILES = 64  # files whose key -> row map is kept per process


@dataclass
class _Layout:
    column: str
    kind: str  # "bytes", "struct" or "path"
    rows: dict[str, tuple[int, int]]  # member -> (row group, row in it)
    base: str


_LAYOUTS: OrderedDict[tuple[str, int, int, str | None], _Layout] = OrderedDict()
# (file identity, the column asked for, or None to pick) -> its layout: a member read
# finds the layout without opening the file's footer again
_READERS: dict[tuple[str, int, int, str | None], _Layout] = {}
_GROUP: dict[str, Any] = {}  # the last row group's image column read: {ident: values}
_OPTIONS: dict[str, Any] = {}  # collection root (real path) -> SourceOptions
_LOCK = threading.Lock()  # the server reads from several threads


def configure(root: str, opts: Any) -> None:
    """Remember the image column and base folder for containers under ``root`` (readers
    in this process find them by path: decoding workers, the server)."""
    _OPTIONS[os.path.realpath(root)] = opts


def _options_for(path: str) -> Any:
    real = os.path.realpath(path)
    best = max((r for r in _OPTIONS if real.startswith(r + os.sep)), key=len, default=None)
    return _OPTIONS.get(best) if best else None


def _column_kind(field: Any) -> str | None:
    import pyarrow as pa

    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    return None


def _pick_column(schema: Any, wanted: str | None) -> tuple[str, str] | None:
    """(column, kind): the named one, else the first bytes or image-struct column."""
    if wanted is not None:
        if wanted not in schema.names:
            return None
        kind = _column_kind(schema.field(wanted))
        if kind is None:
            raise ValueError(f"column {wanted!r} holds {schema.field(wanted).type}, not images")
        return wanted, kind
    for field in schema:
        kind = _column_kind(field)
        if kind in ("bytes", "struct"):
            return field.name, kind
    return None


def _as_field(v: Any) -> Any:
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, default=str, ensure_ascii=False)
    if isinstance(v, bytes):
        return None  # other binary columns are not metadata
    return v


class ParquetImages:
    suffixes = (".parquet",)

    def items(
        self,
        path: str,
        rel: str,
        st: os.stat_result,
        opts: Any,
        explicit: bool,
        on_error: Callable[[str, str], None],
    ) -> Iterator[ScannedFile]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # not Parquet, or damaged: an error for the file
            on_error(rel, f"cannot read Parquet: {e}")
            return
        wanted = getattr(opts, "image_column", None)
        try:
            picked = _pick_column(pf.schema_arrow, wanted)
        except ValueError as e:
            on_error(rel, str(e))
            return
        if picked is None:
            if explicit or wanted is not None:
                what = f"no column {wanted!r}" if wanted else "no image column (bytes or struct)"
                on_error(rel, f"{what}; columns: {', '.join(pf.schema_arrow.names)}")
            return
        column, kind = picked
        base = getattr(opts, "image_base", None) or os.path.dirname(path)
        layout = _layout(pf, path, st, column, kind, base)
        keys = {v: k for k, v in layout.rows.items()}
        for rg in range(pf.num_row_groups):
            table = pf.read_row_group(rg)
            sizes = _sizes(table[column], kind, base)
            others = [c for c in table.column_names if c != column]
            fields = {c: table[c].to_pylist() for c in others}
            for i in range(table.num_rows):
                extra = {c: _as_field(fields[c][i]) for c in others}
                size, mtime = sizes[i] if sizes[i] is not None else (0, st.st_mtime_ns)
                yield ScannedFile(f"{rel}/{keys[(rg, i)]}", size, mtime or st.st_mtime_ns, extra)

    def read(self, path: str, member: str, max_bytes: int) -> bytes:
        from vlmsearch.imaging.file_read import read_image_file

        layout = _layout_for(path)
        where = layout.rows.get(member)
        if where is None:
            raise OSError(f"no row {member!r} in {os.path.basename(path)}")
        value = _group_values(path, layout, where[0])[where[1]]
        if layout.kind == "path":
            if not value:
                raise OSError("the row has no image path")
            return read_image_file(os.path.join(layout.base, value), max_bytes)
        if layout.kind == "struct":
            value = (value or {}).get("bytes")
        if value is None:
            raise OSError("the row has no image bytes")
        if len(value) > max_bytes:
            raise OSError(f"image is over the {max_bytes}-byte limit")
        return bytes(value)

    def extras(self, path: str, member: str, sidecars: tuple[str, ...]) -> dict[str, Any]:
        return {}  # a row's fields travel inline with its scanned item


def _sizes(col: Any, kind: str, base: str) -> list[tuple[int, int] | None]:
    """Each row's (image size, mtime or 0): byte lengths, or the stat of a path."""
    import pyarrow.compute as pc

    if kind == "bytes":
        return [None if n is None else (n, 0) for n in pc.binary_length(col).to_pylist()]
    if kind == "struct":
        lengths = pc.binary_length(pc.struct_field(col, "bytes")).to_pylist()
        return [None if n is None else (n, 0) for n in lengths]
    out: list[tuple[int, int] | None] = []
    for p in col.to_pylist():
        try:
            st = os.stat(os.path.join(base, p)) if p else None
        except OSError:
            st = None
        out.append((st.st_size, st.st_mtime_ns) if st else None)
    return out


def _layout(pf: Any, path: str, st: os.stat_result, column: str, kind: str, base: str) -> _Layout:
    ident = (os.path.realpath(path), st.st_size, st.st_mtime_ns, column)
    with _LOCK:
        hit = _LAYOUTS.get(ident)
        if hit is not None:
            _LAYOUTS.move_to_end(ident)
            return hit
    counts = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    places = [(rg, i) for rg, n in enumerate(counts) for i in range(n)]
    keys: list[str] | None = None
    if KEY_COLUMN in pf.schema_arrow.names and column != KEY_COLUMN:
        keys = [str(k) for k in pf.read(columns=[KEY_COLUMN])[KEY_COLUMN].to_pylist()]
        if len(set(keys)) != len(keys) or any(not k or "/" in k for k in keys):
            keys = None  # not usable as member names: row numbers instead
    if keys is None:
        keys = [str(n) for n in range(len(places))]
    layout = _Layout(column, kind, dict(zip(keys, places, strict=True)), base)
    with _LOCK:
        _LAYOUTS[ident] = layout
        while len(_LAYOUTS) > _CACHE_FILES:
            _LAYOUTS.popitem(last=False)
    return layout


def _layout_for(path: str) -> _Layout:
    """The layout of a file being read (after the scan, or in another process)."""
    import pyarrow.parquet as pq

    st = os.stat(path)
    opts = _options_for(path)
    wanted = getattr(opts, "image_column", None)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, wanted)
    hit = _READERS.get(key)
    if hit is not None:
        return hit
    try:
        pf = pq.ParquetFile(path)
        picked = _pick_column(pf.schema_arrow, wanted)
    except ValueError as e:
        raise OSError(str(e)) from None
    except Exception as e:
        raise OSError(f"cannot read Parquet: {e}") from None
    if picked is None:
        raise OSError(f"{os.path.basename(path)} has no image column")
    base = getattr(opts, "image_base", None) or os.path.dirname(path)
    layout = _layout(pf, path, st, picked[0], picked[1], base)
    with _LOCK:
        if len(_READERS) >= _CACHE_FILES:
            _READERS.clear()
        _READERS[key] = layout
    return layout


def _group_values(path: str, layout: _Layout, rg: int) -> list[Any]:
    """The image column of one row group, the last one read kept (rows come in order)."""
    import pyarrow.parquet as pq

    st = os.stat(path)
    ident = f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{layout.column}:{rg}"
    with _LOCK:
        if ident not in _GROUP:
            _GROUP.clear()
            table = pq.ParquetFile(path).read_row_group(rg, columns=[layout.column])
            _GROUP[ident] = table[layout.column].to_pylist()
        return _GROUP[ident]
