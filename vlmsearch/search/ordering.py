"""Relevance control after ranking: a score cut-off and an order by a metadata column.

The cut-off (``min_score``) keeps hits scoring at least that much; ``sort`` then orders
the kept hits by a column (``taken_at``, ``-taken_at`` for newest first), so "the
relevant photos, by date" is one search (Immich #5996, #11819). Ties keep their
relevance order and nulls go last either way; ``rank`` is renumbered to the new order
(and after a cut), while ``score`` still says how relevant each hit is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from vlmsearch.errors import QueryError
from vlmsearch.results import Hit

if TYPE_CHECKING:
    from vlmsearch.storage.reader import CollectionReader


def sortable_columns(reader: CollectionReader) -> list[str]:
    """Columns ``sort`` accepts: numbers, times, dates, booleans and text."""
    out = []
    for name, t in reader.column_types().items():
        if name.startswith("_"):
            continue
        if (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_temporal(t)
            or pa.types.is_boolean(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
        ):
            out.append(name)
    return out


def parse_sort(reader: CollectionReader, sort: str) -> tuple[str, bool]:
    """``"taken_at"`` -> (``taken_at``, ascending); ``"-taken_at"`` -> descending. A column
    that does not exist or cannot be sorted is a one-line error naming those that can."""
    spec = sort.strip()
    descending = spec.startswith("-")
    column = spec.lstrip("+-").strip()
    columns = sortable_columns(reader)
    if column not in columns:
        raise QueryError(
            f"cannot sort by {column or sort!r}: not a sortable column of this collection "
            f"(sortable: {', '.join(columns)}; prefix '-' for descending)"
        )
    return column, descending


def check_min_score(min_score: Any) -> float | None:
    """``min_score`` as a float (None: no cut-off); anything else is a one-line error."""
    if min_score is None:
        return None
    if isinstance(min_score, bool):
        raise QueryError(f"the minimum score must be a number (got {min_score!r})")
    try:
        value = float(min_score)
    except (TypeError, ValueError):
        raise QueryError(f"the minimum score must be a number (got {min_score!r})") from None
    if math.isnan(value):
        raise QueryError("the minimum score must be a number (got NaN)")
    return value


def check_order(reader: CollectionReader, min_score: Any, sort: str | None) -> None:
    """Refuse a bad ``min_score`` or ``sort`` before any model is built."""
    check_min_score(min_score)
    if sort is not None:
        parse_sort(reader, sort)


def order_hits(
    reader: CollectionReader, hits: list[Hit], min_score: Any = None, sort: str | None = None
) -> list[Hit]:
    """The hits scoring at least ``min_score``, ordered by ``sort`` (see the module)."""
    cut = check_min_score(min_score)
    if cut is not None:
        kept = [h for h in hits if h.score >= cut]
        if len(kept) < len(hits):  # a reranker's tail may interleave: no gaps in ranks
            hits = [dataclasses.replace(h, rank=n) for n, h in enumerate(kept, start=1)]
    if sort is None or not hits:
        return hits
    column, descending = parse_sort(reader, sort)
    rows = reader.rows([h.id for h in hits])
    keyed = [(rows.get(h.id, {}).get(column), h) for h in hits]
    present = [(v, h) for v, h in keyed if v is not None]
    missing = [h for v, h in keyed if v is None]
    # a stable sort: equal values keep their relevance order, descending too
    present.sort(key=lambda vh: vh[0], reverse=descending)
    ordered = [h for _, h in present] + missing
    return [dataclasses.replace(h, rank=n) for n, h in enumerate(ordered, start=1)]
