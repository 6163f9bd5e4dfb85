"""Ranked ids and scores turned into :class:`~vlmsearch.results.Hit` objects."""

from __future__ import annotations

import numpy as np

from vlmsearch import names
from vlmsearch.results import Hit
from vlmsearch.storage import metadata
from vlmsearch.storage.reader import CollectionReader


def to_hits(reader: CollectionReader, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
    """One hit per id that still has a metadata row, ranked in the given order, with the
    row's extra columns (labels, captions) attached."""
    rows = reader.rows(ids)
    extra_cols = [c for c in reader.column_names if c not in metadata.BASE_COLUMNS]
    hits = []
    for rank, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True), start=1):
        r = rows.get(i)
        if r is None:
            continue
        hits.append(
            Hit(
                rank=rank,
                score=float(s),
                id=int(i),
                path=str(reader.root / names.row_path(r)),
                relpath=names.row_path(r),
                width=r["width"],
                height=r["height"],
                extra={c: r[c] for c in extra_cols},
            )
        )
    return hits
