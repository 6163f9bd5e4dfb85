"""Names for the fields a source brings (clip-retrieval metadata, webdataset ``.json``
sidecars, Parquet columns) when they become metadata columns."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa

from vlmsearch.imaging.exif import EXIF_COLUMNS
from vlmsearch.storage import metadata

# fields named like vlmsearch's own columns are kept under this prefix
CLASH_PREFIX = "source_"


def column_name(name: str, taken: dict[str, Any] | set[str]) -> str:
    """A field's column name: a plain identifier (other characters become ``_``; a
    ``json_normalize`` field ``exif.Image Make`` is ``exif_Image_Make``), prefixed with
    :data:`CLASH_PREFIX` when it is a built-in name (EXIF ones too), numbered when already taken."""
    key = re.sub(r"\W", "_", name) or "field"
    if key[0].isdigit():
        key = "_" + key
    if key in metadata.BASE_COLUMNS or key in EXIF_COLUMNS:
        key = CLASH_PREFIX + key
    stem, n = key, 2
    while key in taken:
        key, n = f"{stem}_{n}", n + 1
    metadata.check_column_name(key)
    return key


def field_columns(fields: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """Columns from per-item field dicts (one array slot per item, in order): a field
    absent from an item is null there; values of mixed kinds in one column are kept as
    text, nested ones as JSON text."""
    names: dict[str, str] = {}
    for f in fields:
        for k in f:
            if k not in names:
                names[k] = column_name(k, set(names.values()))
    out: dict[str, pa.Array] = {}
    for field, col in names.items():
        values = [f.get(field) for f in fields]
        values = [json.dumps(v, default=str) if isinstance(v, dict | list) else v for v in values]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else str(v) for v in values], pa.string())
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        out[col] = arr
    return out
