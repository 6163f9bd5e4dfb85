"""Captioning a collection's images from their stored vectors: which rows, and the run
that commits captions as it goes (so an interrupted run resumes where it stopped)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlmsearch.errors import CollectionError, QueryError
from vlmsearch.results import ProgressFn
from vlmsearch.storage import metadata
from vlmsearch.storage.extra_writes import check_writable_columns
from vlmsearch.storage.reader import CollectionReader

COMMIT_WAIT_S = 300.0
"""How long each commit of a caption or OCR run waits while another process (an ``index``
run, say) writes the collection, before the run stops with what it has stored kept."""
COMPANIONS = ("_lines", "_settings")
"""Suffixes of the columns stored beside a caption or OCR column; no write column ends so."""


class ColumnTakenError(QueryError):
    """The write column (or a companion of it) holds something else: other data, or another
    kind of text."""

    def __init__(self, message: str, column: str, held: str) -> None:
        super().__init__(message)
        self.column, self.held = column, held


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
    if write_column is not None:  # "" is refused as a name, not taken for "store nothing"
        _check_write_column(reader, write_column, kind)
        check_writable_columns(reader.layout)  # writable and not being written: up front
    ids = reader.vectors.ids
    # the columns after the vectors, which may move the reader to a newer commit
    columns = reader.column_names
    if where and where.strip():
        # the first run of `--where "caption IS NULL" --write-column caption`: the column
        # is not there yet, so null in every row
        missing = [write_column] if write_column and write_column not in columns else []
        ids = np.intersect1d(reader.filter_ids(where, null_columns=missing), ids)
    if write_column is not None and write_column in columns and not overwrite:
        done = reader.filter_ids(f"{metadata.quote_name(write_column)} IS NOT NULL")
        ids = np.setdiff1d(ids, done)
    return ids


def _check_write_column(reader: CollectionReader, write_column: str, kind: str) -> None:
    metadata.check_column_name(write_column)
    for suffix in COMPANIONS:
        if write_column.endswith(suffix):
            raise QueryError(
                f"column name {write_column!r}: names ending in {' or '.join(COMPANIONS)} are "
                "reserved for the companion columns stored beside a text column (NAME_lines, "
                "NAME_settings); choose another --write-column"
            )
    held = ((reader.manifest.get("columns") or {}).get(write_column) or {}).get("kind")
    names = reader.column_names
    own = [write_column, f"{write_column}_settings"]
    own += [f"{write_column}_lines"] if kind == "ocr" else []
    taken = [c for c in own if c in names]
    if taken and held != kind:
        what = "captions" if kind == "caption" else "OCR text"
        raise ColumnTakenError(
            f"column {taken[0]!r} already holds {held or 'other data'}, not "
            f"{what}; choose another --write-column",
            taken[0],
            held or "other data",
        )


class BatchedWrites:
    """A run's values, passed on to ``write`` every ``commit_every`` rows and once more
    when the run ends, also when it is interrupted (Ctrl-C keeps every value made); with
    no ``write``, nothing is kept. A batch that cannot be committed (another writer held
    the collection past the wait, say) fails with its one-line error saying how many rows
    are kept."""

    def __init__(self, write: Callable[[dict[int, Any]], None] | None, commit_every: int) -> None:
        self.write, self.commit_every, self.kept = write, commit_every, 0
        self.pending: dict[int, Any] = {}

    def add(self, key: int, value: Any) -> None:
        if self.write is None:
            return
        self.pending[key] = value
        if len(self.pending) >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if self.write is None or not self.pending:
            return
        values, self.pending = self.pending, {}
        try:
            self.write(values)
        except CollectionError as e:  # same type and attributes, a longer message
            e.args = (
                f"{e}. Kept: the {_rows(self.kept)} stored before; not stored: the "
                f"{_rows(len(values))} of this batch (the next run reads them again)",
            )
            raise
        self.kept += len(values)

    def __enter__(self) -> BatchedWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


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
    is interrupted (Ctrl-C keeps every caption made); a failed commit's error says how
    many were kept."""
    out: list[tuple[int, str]] = []
    with BatchedWrites(write, commit_every) as batch:
        for i in ids.tolist():
            cap = captioner.caption_vector(reader.vectors.dense(np.asarray([i]))[0])
            out.append((int(i), cap.text))
            batch.add(int(i), cap.text)
            if progress:
                progress("caption", 1, len(ids))
    return out
