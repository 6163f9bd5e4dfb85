"""What a reranker (and the region student) may read of the collection it works for: a
narrow, read-only view, never the :class:`~vlmsearch.collection.Collection` itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vlmsearch.models.encoders.base import Encoder
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.reader import CollectionReader
from vlmsearch.storage.vectors import VectorTable


class CollectionView(Protocol):
    """The stored data of a collection and its encoder, read-only."""

    @property
    def path(self) -> Path: ...

    @property
    def root(self) -> Path: ...

    @property
    def layout(self) -> Layout: ...

    @property
    def manifest(self) -> dict[str, Any]: ...

    @property
    def vectors(self) -> VectorTable: ...

    @property
    def encoder(self) -> Encoder: ...

    def rows(self, ids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]: ...


class StudentHome(CollectionView, Protocol):
    """A view that can also store a trained region student: what distillation is given."""

    def save_region_student(self, student: Any, info: dict[str, Any]) -> None: ...


class ReaderView:
    """A :class:`CollectionView` over a storage reader and a getter of the collection's
    encoder (which builds it on first use)."""

    def __init__(self, reader: CollectionReader, encoder: Callable[[], Encoder]) -> None:
        self._reader = reader
        self._encoder = encoder

    @property
    def path(self) -> Path:
        return self._reader.path

    @property
    def root(self) -> Path:
        return self._reader.root

    @property
    def layout(self) -> Layout:
        return self._reader.layout

    @property
    def manifest(self) -> dict[str, Any]:
        return self._reader.manifest

    @property
    def vectors(self) -> VectorTable:
        return self._reader.vectors

    @property
    def encoder(self) -> Encoder:
        return self._encoder()

    def rows(self, ids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        return self._reader.rows(ids)
