"""Captioning a collection's images from their stored vectors: which rows, and the run
that commits captions as it goes (so an interrupted run resumes where it stopped)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.results import ProgressFn
from vlmsearch.storage import metadata
from vlmsearch.storage.extra_writes import check_writable_columns
from vlmsearch.storage.reader import CollectionReader


def caption_targets(
    reader: CollectionReader,
    where: str | None = None,
    write_column: str | None = None,
    overwrite: bool = False,
    kind: str = "caption",
) -> np.ndarray:
    """Ids to caption: the stored vectors ``where`` allows, less the rows that already
    have a caption in ``write_column`` (unless ``overwrite``). The filter and the column
    (name, kind, writability) are checked here, so mistakes fail before any model loads.
    ``kind="ocr"`` does the same for OCR text (whose column has ``_lines`` beside it)."""
    if write_column:
        metadata.check_column_name(write_column)
        held = ((reader.manifest.get("columns") or {}).get(write_column) or {}).get("kind")
        names = reader.column_names
        own = [write_column, f"{write_column}_settings"]
        own += [f"{write_column}_lines"] if kind == "ocr" else []
        taken = [c for c in own if c in names]
        if taken and held != kind:
            what = "captions" if kind == "caption" else "OCR text"
            raise QueryError(
                f"column {taken[0]!r} already holds {held or 'other data'}, not "
                f"{what}; choose another --write-column"
            )
        check_writable_columns(reader.layout)  # writable and not being written: up front
    ids = reader.vectors.ids
    # the columns after the vectors, which may move the reader to a newer commit
    columns = reader.column_names
    if where and where.strip():
        # the first run of `--where "caption IS NULL" --write-column caption`: the column
        # is not there yet, so null in every row
        missing = [write_column] if write_column and write_column not in columns else []
        ids = np.intersect1d(reader.filter_ids(where, null_columns=missing), ids)
    if write_column and write_column in columns and not overwrite:
        done = reader.filter_ids(f"{metadata.quote_name(write_column)} IS NOT NULL")
        ids = np.setdiff1d(ids, done)
    return ids


def caption_stored(
    reader: CollectionReader,
    captioner: Any,
    ids: np.ndarray,
    write: Callable[[dict[int, str]], None] | None = None,
    commit_every: int = 16,
    progress: ProgressFn | None = None,
) -> list[tuple[int, str]]:
    """``(id, caption)`` for each id, from its stored vector. With ``write``, captions are
    passed on every ``commit_every`` images and once more at the end, also when the run
    is interrupted (Ctrl-C keeps every caption made)."""
    out: list[tuple[int, str]] = []
    pending: dict[int, str] = {}
    try:
        for i in ids.tolist():
            cap = captioner.caption_vector(reader.vectors.dense(np.asarray([i]))[0])
            out.append((int(i), cap.text))
            pending[int(i)] = cap.text
            if write is not None and len(pending) >= commit_every:
                write(pending)
                pending.clear()
            if progress:
                progress("caption", 1, len(ids))
    finally:
        if write is not None and pending:
            write(pending)
    return out
