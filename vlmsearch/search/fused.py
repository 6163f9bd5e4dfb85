"""Search over a text column (captions) embedded with the collection's encoder, alone or
fused with the image vectors; and those embeddings, kept up to date as the column changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from vlmsearch.errors import CollectionError, QueryError
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.results import Hit, ProgressFn
from vlmsearch.search import vector_search
from vlmsearch.search.hits import to_hits
from vlmsearch.storage import metadata
from vlmsearch.storage.column_vectors import TextVectors, refresh
from vlmsearch.storage.reader import CollectionReader
from vlmsearch.storage.snapshot import on_one_commit

SaveFn = Callable[[str, TextVectors, dict[str, Any]], None]


@on_one_commit
def search_fused(
    reader: CollectionReader,
    text_vectors: Callable[[str], TextVectors],
    vector: np.ndarray,
    text_column: str,
    text_weight: float = 1.0,
    k: int = 10,
    where: str | None = None,
    params: dict[str, int] | None = None,
) -> list[Hit]:
    """Search a text column's embeddings (``text_vectors(column)``), optionally fused with
    the image vectors.

    ``text_weight`` w in [0, 1] gives ``w * text score + (1 - w) * image score``; rows
    without text score 0 on the text side. Candidates are every allowed row when at most
    :data:`~vlmsearch.search.vector_search.EXACT_SUBSET_MAX` (exact); otherwise the union
    of each side's top ``max(4k, 256)``, each rescored exactly on both sides."""
    if not 0.0 <= text_weight <= 1.0:
        raise QueryError(f"the text weight must lie in [0, 1] (got {text_weight})")
    q = vector_search.query_row(reader, vector, k)[0]
    tv = text_vectors(text_column)
    live = reader.vectors.ids
    if where and where.strip():
        live = vector_search.sorted_intersection(reader.filter_ids(where), live)
    text_ids, text_scores = tv.ids, tv.scores(q)
    keep = np.isin(text_ids, live)
    text_ids, text_scores = text_ids[keep], text_scores[keep]
    if text_weight == 1.0:
        cand = text_ids
    elif len(live) <= vector_search.EXACT_SUBSET_MAX:  # read at call time: tests lower it
        cand = live
    else:
        depth = max(4 * k, 256)
        top_text = text_ids[np.argsort(-text_scores, kind="stable")[:depth]]
        top_image = [h.id for h in vector_search.search_vector(reader, q, depth, where, params)]
        cand = np.union1d(top_text, np.asarray(top_image, np.int64))
    if len(cand) == 0:
        return []
    caption = np.zeros(len(cand), np.float32)
    pos = np.searchsorted(text_ids, cand)
    pos = np.clip(pos, 0, max(len(text_ids) - 1, 0))
    has = text_ids[pos] == cand if len(text_ids) else np.zeros(len(cand), bool)
    caption[has] = text_scores[pos[has]]
    image = np.zeros(len(cand), np.float32)
    if text_weight < 1.0:
        for lo in range(0, len(cand), 8192):  # bounded memory for the float32 copies
            rows = reader.vectors.get(cand[lo : lo + 8192])
            image[lo : lo + 8192] = np.asarray(rows @ q).ravel()
    fused = text_weight * caption + (1.0 - text_weight) * image
    top = np.argsort(-fused, kind="stable")[: min(k, vector_search.MAX_K)]
    hits = to_hits(reader, cand[top], fused[top])
    parts = {
        int(i): (float(caption[j]), float(image[j])) for j, i in zip(top, cand[top], strict=True)
    }
    for h in hits:
        c, m = parts[h.id]
        h.scores = {text_column: c} if text_weight == 1.0 else {text_column: c, "image": m}
    return hits


def column_vectors(
    reader: CollectionReader,
    column: str,
    encoder: Callable[[], Encoder],
    save: SaveFn | None,
    note: Callable[[str], None],
    progress: ProgressFn | None = None,
) -> TextVectors:
    """The embeddings of a text column's non-empty rows (an image where OCR found no text
    holds ""), brought up to date.

    New or changed texts are embedded with ``encoder()`` (the collection's own) and, when
    they changed, passed to ``save``; a save that
    fails (read-only, another process writing) leaves them in memory for this process,
    with a line through ``note``. Kept per commit in ``reader.commit_cache``."""
    check_text_column(reader, column)  # may move the reader to a newer commit: first
    key = f"text_vectors:{column}"
    state = reader.state
    hit: tuple[tuple[Any, ...], TextVectors] | None = reader.commit_cache.get(key)
    if hit is not None and reader.same_state(hit[0]):
        return hit[1]  # nothing committed since: no need to digest every row again
    name = metadata.quote_name(column)
    rows = reader.metadata_filter().select(
        f"SELECT id, {name} FROM {metadata.TABLE_NAME} "
        f"WHERE status = 'ok' AND {name} IS NOT NULL AND {name} <> '' ORDER BY id"
    )
    ids = rows["id"].to_numpy().astype(np.int64)
    texts = [str(t) for t in rows[column].to_pylist()]
    identity = Encoder.identity(reader.manifest["encoder"])
    cached = hit[1] if hit is not None else None
    if cached is None:
        entry = (reader.manifest.get("text_vectors") or {}).get(column) or {}
        cached = TextVectors.empty(reader.dim, reader.sparse)
        if entry.get("encoder") == identity and entry.get("file"):
            cached = reader.read_verified(entry["file"], TextVectors.read)
    tv, embedded = refresh(cached, ids, texts, encoder().encode_texts, reader.sparse, progress)
    if save is not None and (embedded or len(tv) != len(cached)):
        info = {"encoder": identity, "encoder_name": reader.manifest["encoder"].get("name")}
        try:
            save(column, tv, info)
        except (CollectionError, OSError) as e:
            note(f"embeddings of column {column!r} not saved: {e}")
    reader.commit_cache[key] = (state, tv)
    return tv


def check_text_column(reader: CollectionReader, column: str) -> None:
    """Refuse a column that is not a searchable text column (the settings columns of
    captions and OCR, and OCR's lines, hold JSON, not text to search)."""
    columns = reader.manifest.get("columns") or {}
    kinds = {c: (e or {}).get("kind") for c, e in columns.items()}
    settings = {f"{c}_settings" for c, k in kinds.items() if k in ("caption", "ocr")}
    settings |= {f"{c}_lines" for c, k in kinds.items() if k == "ocr"}  # JSON, not text
    text_cols = [
        name
        for name, kind in reader.column_types().items()
        if name not in metadata.BASE_COLUMNS
        and name not in settings
        and (pa.types.is_string(kind) or pa.types.is_large_string(kind))
    ]
    if column not in text_cols:
        known = ", ".join(text_cols) or "none yet; `vlmsearch caption --write-column` adds one"
        raise QueryError(f"no text column {column!r} in the metadata (text columns: {known})")
