"""Commits of what is added beside the vectors: label and caption columns, text-column
embeddings, a region student.

These live in storage, not ingest: they encode nothing and scan no folder; each is one
commit of the latest committed state plus some columns or side files, under the writer
lock, built from storage primitives alone. Kept here, the layers above (classification,
captioning, text-column search, distillation) reach them without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from vlmsearch.errors import CollectionError
from vlmsearch.results import Prediction
from vlmsearch.storage import metadata
from vlmsearch.storage.column_vectors import TextVectors
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.reader import CollectionReader
from vlmsearch.storage.store import CollectionWriter


class ExtraWriter:
    """Writes extra columns and side files of the collection that ``reader`` reads; after
    each commit the reader reads the new state."""

    def __init__(self, reader: CollectionReader) -> None:
        self.reader = reader
        self.read_only = False  # set by the server: nothing is committed

    def predictions(
        self, column: str, preds: Sequence[Prediction], labels: list[str], templates: str
    ) -> None:
        """The best label of each prediction as ``column``, its score as ``column_score``;
        the manifest records the labels, templates and encoder that made them."""
        ids = np.asarray([p.id for p in preds], np.int64)
        label_arr = pa.array([p.label for p in preds], pa.string())
        score_arr = pa.array([p.score for p in preds], pa.float32())
        info = {
            "kind": "zero-shot label",
            "labels": labels,
            "templates": templates,
            "encoder": self.reader.manifest["encoder"].get("name"),
        }
        columns = {column: label_arr, f"{column}_score": score_arr}
        self.commit(ids, columns, {column: info})

    def text_column(
        self, column: str, values: dict[int, str], info: dict[str, Any], wait_s: float = 0.0
    ) -> None:
        """Texts (captions) by id as ``column``; ``info`` (the settings that made them) is
        kept per row too, as ``column_settings``: a resumed run may have used other ones.
        ``wait_s``: how long to wait for another writer (see :meth:`commit`)."""
        ids = np.fromiter(values, np.int64, len(values))
        arr = pa.array([values[i] for i in ids.tolist()], pa.string())
        settings = pa.array([json.dumps(info, sort_keys=True)] * len(ids), pa.string())
        columns = {column: arr, f"{column}_settings": settings}
        self.commit(ids, columns, {column: {"kind": "caption", **info}}, wait_s=wait_s)

    def ocr_column(
        self,
        column: str,
        values: dict[int, tuple[str, list[dict[str, Any]]]],
        info: dict[str, Any],
        wait_s: float = 0.0,
    ) -> None:
        """OCR results by id: the text as ``column`` (lines joined by newlines, "" for an
        image without text), each line's text, 4-point box and confidence as JSON in
        ``column_lines``, and ``info`` per row as ``column_settings``. ``wait_s``: how long
        to wait for another writer (see :meth:`commit`)."""
        ids = np.fromiter(values, np.int64, len(values))
        texts = pa.array([values[i][0] for i in ids.tolist()], pa.string())
        lines = pa.array([json.dumps(values[i][1]) for i in ids.tolist()], pa.string())
        settings = pa.array([json.dumps(info, sort_keys=True)] * len(ids), pa.string())
        columns = {column: texts, f"{column}_lines": lines, f"{column}_settings": settings}
        self.commit(ids, columns, {column: {"kind": "ocr", **info}}, wait_s=wait_s)

    def commit(
        self,
        ids: np.ndarray | None = None,
        columns: dict[str, pa.Array] | None = None,
        column_info: dict[str, dict[str, Any]] | None = None,
        *,
        wait_s: float = 0.0,
        **commit: Any,
    ) -> None:
        """Commit metadata ``columns`` for ``ids`` (with their manifest ``column_info``), or
        side files passed on to :meth:`CollectionWriter.commit` (``text_vectors=``,
        ``student=``), on top of the latest committed state. While another process writes
        the collection, wait up to ``wait_s`` seconds for it (a long run's batch), else fail
        at once."""
        reader = self.reader
        if self.read_only:
            raise CollectionError(f"collection {reader.path} is open read-only here")
        layout = reader.layout
        with layout.lock(wait_s):
            manifest = layout.read_manifest()
            # only the new values are written (a column segment), not the metadata; a
            # format-1 collection is migrated by this commit (its table becomes a segment)
            writer = CollectionWriter(layout, manifest)
            writer.previous = manifest
            if columns:
                assert ids is not None
                writer.set_columns(ids, columns)
            if column_info:
                writer.manifest["columns"] = {**(manifest.get("columns") or {}), **column_info}
            writer.commit(data_changed=False, **commit)
            reader.follow(writer.manifest)

    def text_vectors(self, column: str, tv: TextVectors, info: dict[str, Any]) -> None:
        """Store the embeddings of a text column."""
        self.commit(text_vectors={column: (tv, info)})


def check_writable_columns(layout: Layout, *columns: str) -> None:
    """Refuse column names that cannot be written, and a collection that is locked or
    read-only, before anything is computed."""
    for name in columns:
        metadata.check_column_name(name)
    with layout.lock():
        pass
