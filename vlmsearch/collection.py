"""The Python API: :class:`Collection` opens, indexes, searches and classifies.

>>> from vlmsearch import Collection
>>> coll = Collection.index("~/Pictures")                       # doctest: +SKIP
>>> coll.search("a dog on a beach", k=10, where="width >= 1024")  # doctest: +SKIP

A facade: each method hands its work to the package that does it -- storage reads to a
:class:`~vlmsearch.storage.reader.CollectionReader`, query embedding to
:class:`~vlmsearch.search.query_encoders.QueryEncoders`, then :mod:`vlmsearch.search`,
:mod:`vlmsearch.rerank`, :mod:`vlmsearch.caption`, and the commits of extra columns to
:class:`~vlmsearch.storage.extra_writes.ExtraWriter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.ingest.indexing import index_folder
from vlmsearch.ingest.pipeline import IngestOptions, IngestReport, check_encoder_matches
from vlmsearch.models.encoders import DEFAULT_KIND
from vlmsearch.models.encoders.base import Encoder, TextEmbedder
from vlmsearch.rerank.view import ReaderView
from vlmsearch.results import Hit, Prediction, ProgressFn
from vlmsearch.search import fused, vector_search
from vlmsearch.search.classify import classify_files, classify_stored
from vlmsearch.search.query import Term, positive_text, query_vector, search_terms
from vlmsearch.search.query_encoders import QueryEncoders, encoder_for_model
from vlmsearch.storage.column_vectors import TextVectors
from vlmsearch.storage.extra_writes import ExtraWriter, check_writable_columns
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.locate import locate_collection, resolve_collection_path
from vlmsearch.storage.reader import CollectionReader

__all__ = [
    "Collection",
    "Hit",
    "Prediction",
    "classify_files",
    "locate_collection",
    "resolve_collection_path",
]


def _from_reader(name: str, settable: bool = False) -> Any:
    """A property that reads (and, if ``settable``, writes) the reader's attribute."""

    def set_(self: Collection, value: Any) -> None:
        setattr(self.reader, name, value)

    doc = f"The reader's ``{name}`` (see :class:`CollectionReader`)."
    return property(lambda self: getattr(self.reader, name), set_ if settable else None, doc=doc)


class Collection:
    """An indexed image folder: manifest, metadata, vectors and a FAISS index."""

    def __init__(self, layout: Layout, device: str | None = None) -> None:
        self.layout = layout
        self.device = device
        self.reader = CollectionReader(layout)
        self.last_report: IngestReport | None = None
        self.notices: list[str] = []
        # set by a caller that shows notes as they come (else they wait in self.notices)
        self.on_notice: Callable[[str], None] | None = None
        self._encoders = QueryEncoders(self.reader, device, self.notify)
        self._writer = ExtraWriter(self.reader)
        # what rerankers see: never this object, only the data and the encoder
        self.view = ReaderView(self.reader, lambda: self.encoder)

    # the stored data, read through the reader
    manifest = _from_reader("manifest")
    table = _from_reader("table", settable=True)
    filter_budget = _from_reader("filter_budget", settable=True)  # None: no time limit
    index_is_stale = _from_reader("index_is_stale")
    moves = _from_reader("moves")  # times a lazy load moved to a newer commit
    path = _from_reader("path")
    root = _from_reader("root")
    dim = _from_reader("dim")
    sparse = _from_reader("sparse")
    vectors = _from_reader("vectors")
    faiss_index = _from_reader("faiss_index")
    rows = _from_reader("rows")
    lookup_file = _from_reader("lookup_file")
    live_ids = _from_reader("live_ids")
    filter_ids = _from_reader("filter_ids")
    info = _from_reader("info")
    # caches that tests inspect
    _filter = _from_reader("loaded_filter")
    _vectors = _from_reader("loaded_vectors")
    _encoder = property(lambda self: self._encoders.loaded)
    _image_queries = property(lambda self: self._encoders.image_queries)

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def read_only(self) -> bool:
        """Set by the server: nothing is committed (text-column embeddings stay in memory)."""
        return self._writer.read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self._writer.read_only = value

    def notify(self, note: str) -> None:
        """Show a line for the user through :attr:`on_notice`, else keep it in :attr:`notices`.

        Args:
            note: the line.
        """
        if self.on_notice is not None:
            self.on_notice(note)
        elif note not in self.notices and len(self.notices) < 100:  # bounded in a server
            self.notices.append(note)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, device: str | None = None) -> Collection:
        """Open an existing collection.

        Args:
            path: the collection, or a folder indexed into its ``.vlmsearch``; default:
                see :func:`~vlmsearch.storage.locate.resolve_collection_path`.
            device: where models run (``cpu``, ``cuda``, ``auto``).
        """
        return cls(Layout(resolve_collection_path(path)), device=device)

    @classmethod
    def index(
        cls,
        root: str | Path,
        collection: str | Path | None = None,
        model: str | None = None,
        encoder: Encoder | None = None,
        encoder_kind: str | None = None,
        options: IngestOptions | None = None,
        progress: ProgressFn | None = None,
        device: str | None = None,
        encoder_options: dict[str, Any] | None = None,
        text_onnx: bool = True,
        on_notice: Callable[[str], None] | None = None,
    ) -> Collection:
        """Index (or update) the images under ``root``; returns the opened collection, with
        the run's report in ``.last_report`` (its time includes model loading).

        Args:
            root: the image folder.
            collection: where the collection goes (default: ``root/.vlmsearch``).
            model: the model; without it (and ``encoder_kind``) an existing collection
                keeps its own encoder, built only when a file must be encoded or a query
                export is missing, and a new one uses the default CLIP model -- or, when
                those weights cannot be loaded and the offline extra is installed, the
                offline ASIF default (said in the notices; recorded in the manifest as
                ``encoder_choice``).
            encoder: an already-loaded encoder to use instead.
            encoder_kind: the encoder kind (``open_clip``, ``asif``, ...).
            options: scan, batch, index and repair settings.
            progress: called as the work goes.
            device: where models run.
            encoder_options: the encoder's own settings (ASIF: k, p, towers).
            text_onnx: also export the encoder's text (and image) towers to ONNX once
                per model (cached), so that later queries need not import torch.
            on_notice: told each notice (the model choice) before any file is read.
        """
        t0 = time.perf_counter()
        run = index_folder(
            root,
            collection,
            model=model,
            encoder=encoder,
            encoder_kind=encoder_kind,
            options=options,
            progress=progress,
            device=device,
            encoder_options=encoder_options,
            text_onnx=text_onnx,
            on_notice=on_notice,
        )
        coll = cls(run.layout, device=device)
        coll._encoders.loaded = run.source.loaded
        run.last_report.seconds = time.perf_counter() - t0  # everything: model loading too
        coll.last_report = run.last_report
        return coll

    # -- encoders -------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The collection's own encoder, loaded on first use."""
        return self._encoders.encoder

    def _query_encoder(self, terms: Sequence[Term]) -> TextEmbedder:
        return self._encoders.for_terms(terms)

    def use_encoder(self, encoder: Encoder) -> None:
        """Use an already-loaded encoder; refused unless it matches the collection's.

        Args:
            encoder: the encoder (the same model as the collection's, maybe wrapped).
        """
        check_encoder_matches(self.manifest, encoder, "the query")
        self._encoders.loaded = encoder

    def check_model(self, model: str, kind: str = DEFAULT_KIND) -> None:
        """Refuse a query model that differs from the collection's; decided from names and
        file hashes where possible, so the model is then not built here at all.

        Args:
            model: the model the query names (``asif[:ANCHORS]`` names ASIF).
            kind: its encoder kind.
        """
        encoder = encoder_for_model(self.manifest, model, kind, self.device)
        if encoder is not None:
            self.use_encoder(encoder)

    # -- search ---------------------------------------------------------------------------------
    def search(
        self,
        text: str | Sequence[str] | None = None,
        *,
        k: int = 10,
        where: str | None = None,
        image: str | Path | Any | Sequence[Any] | None = None,
        negative: str | Sequence[str] | None = None,
        negative_image: str | Path | Sequence[Any] | None = None,
        params: dict[str, int] | None = None,
        text_column: str | None = None,
        text_weight: float = 1.0,
        rerank: str | Any | None = None,
        rerank_top: int | None = None,
        fusion: float | None = None,
        rerank_options: dict[str, Any] | None = None,
        progress: ProgressFn | None = None,
    ) -> list[Hit]:
        """Text, image or combined search. Every argument is checked, and query images
        decoded, before a model is built.

        Args:
            text: query texts; each may carry an rclip-style weight (``"2:a dog"``).
            k: how many hits.
            where: a SQL filter over the metadata (``"width >= 1024"``).
            image: query images (paths or PIL images), weighted likewise.
            negative, negative_image: texts and images to move away from.
            params: index search parameters (``nprobe``, ``efSearch``).
            text_column: also compare the query with this metadata column's text
                (captions, embedded once and stored; see :meth:`text_vectors`).
            text_weight: with ``text_column``, the score is ``text_weight * caption score
                + (1 - text_weight) * image score``: 1 searches the captions alone.
            rerank: a reranker spec (``"region"``, ``"coca:ARCH/TAG"``) or a loaded
                :class:`~vlmsearch.rerank.Reranker`.
            rerank_top: how many first-stage hits it rescores (default: the reranker's,
                50; 10 for the region teacher on a CPU).
            fusion: see :meth:`rerank_hits`.
            rerank_options: options for loading the reranker.
            progress: called as the reranker goes.
        """
        from vlmsearch.rerank.apply import load_for_search
        from vlmsearch.search.preflight import check_search

        terms = search_terms(self.reader, k, text, image, negative, negative_image)
        check_search(self.reader, where=where, text_column=text_column, text_weight=text_weight)
        reranker, top = load_for_search(rerank, rerank_top, self.view, self.device, rerank_options)
        vector = query_vector(self._query_encoder(terms), terms)
        first_k = max(k, top) if reranker is not None and top else k
        if text_column is not None:
            hits = self.search_fused(vector, text_column, text_weight, first_k, where, params)
        else:
            hits = self.search_vector(vector, k=first_k, where=where, params=params)
        if reranker is None:
            return hits
        from vlmsearch.rerank.base import RerankQuery

        assert top is not None
        query = RerankQuery(positive_text(terms), vector, self.view)
        return self.rerank_hits(hits, reranker, query, top, fusion, progress)[:k]

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """Nearest stored images to an embedding in this collection's space.

        Args:
            vector: the query embedding (this collection's dimension).
            k: how many hits.
            where: a SQL filter over the metadata.
            params: index search parameters (``nprobe``, ``efSearch``).
        """
        return vector_search.search_vector(self.reader, vector, k, where, params)

    def similar(
        self,
        id: int,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """ "More like this": the stored images nearest to stored image ``id``, itself left
        out. Its stored vector is the query, so nothing is decoded or encoded.

        Args:
            id: the image's id.
            k, where, params: as for :meth:`search_vector`.
        """
        return vector_search.similar(self.reader, id, k, where, params)

    def search_fused(
        self,
        vector: np.ndarray,
        text_column: str,
        text_weight: float = 1.0,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """Search a text column's embeddings, optionally fused with the image vectors (see
        :func:`vlmsearch.search.fused.search_fused` for how candidates are chosen).

        Args:
            vector: the query embedding.
            text_column: the metadata column of texts (captions).
            text_weight: w in [0, 1]: ``w * text score + (1 - w) * image score``; rows
                without text score 0 on the text side.
            k, where, params: as for :meth:`search_vector`.
        """
        return fused.search_fused(
            self.reader, self.text_vectors, vector, text_column, text_weight, k, where, params
        )

    def rerank_hits(
        self,
        hits: list[Hit],
        reranker: Any,
        query: Any,
        top: int = 50,
        fusion: float | None = None,
        progress: ProgressFn | None = None,
    ) -> list[Hit]:
        """Rescore the first ``top`` hits with ``reranker`` and sort them by the result;
        ``hit.scores`` keeps both parts, and hits below ``top`` follow unchanged.

        Args:
            hits: the first stage's hits, best first.
            reranker: a loaded :class:`~vlmsearch.rerank.Reranker`.
            query: the :class:`~vlmsearch.rerank.base.RerankQuery`.
            top: how many hits to rescore.
            fusion: None for the reranker's own score, else ``fusion * minmax(rerank) +
                (1 - fusion) * minmax(first stage)`` over the reranked hits.
            progress: called as the reranker goes.
        """
        from vlmsearch.rerank.apply import rerank_hits

        return rerank_hits(self.view, hits, reranker, query, top, fusion, progress, self.notify)

    def text_vectors(
        self, column: str, progress: ProgressFn | None = None, save: bool = True
    ) -> TextVectors:
        """The embeddings of a text column's non-empty rows, brought up to date: new or
        changed texts are embedded with the collection's encoder. When they cannot be
        committed (read-only, another process writing) they are kept in memory for this
        process only, with a line in :attr:`notices`.

        Args:
            column: the metadata column of texts.
            progress: called as texts are embedded.
            save: commit new embeddings so that later searches reuse them.
        """
        saver = self._commit_text_vectors if save and not self.read_only else None
        notes = self.notices.append
        return fused.column_vectors(
            self.reader, column, lambda: self.encoder, saver, notes, progress
        )

    # -- zero-shot classification ---------------------------------------------------------------
    def classify(
        self,
        labels: str | Sequence[str],
        *,
        templates: str = "openai",
        top_k: int = 1,
        where: str | None = None,
        write_column: str | None = None,
        rule: str = "mean",
    ) -> list[Prediction]:
        """Classify the stored vectors (no image is re-encoded).

        Args:
            labels: class names (a comma-separated string, or a sequence).
            templates: the prompt template set.
            top_k: how many labels each prediction lists.
            where: a SQL filter over the metadata.
            write_column: also store each best label (and ``_score``) as this metadata
                column, so that ``where="COLUMN = 'label'"`` filters on it.
            rule: ``mean`` (CLIP's averaged prompts) or ``best`` (ASIF's best prompt).
        """
        preds, label_list = classify_stored(
            self.reader,
            self._encoders.text,  # not built when every label embedding is cached
            labels,
            templates=templates,
            top_k=top_k,
            where=where,
            write_column=write_column,
            rule=rule,
        )
        if write_column:
            self.write_predictions(write_column, preds, label_list, templates)
        return preds

    def check_label_column(self, column: str) -> None:
        """Refuse a ``write_column`` that cannot be written (bad name, collection locked or
        read-only) before anything is computed.

        Args:
            column: the label column (``column_score`` is checked too).
        """
        check_writable_columns(self.layout, column, f"{column}_score")

    def write_predictions(
        self, column: str, preds: Sequence[Prediction], labels: list[str], templates: str
    ) -> None:
        """Store :meth:`classify`'s predictions (best label and its score) as ``column`` and
        ``column_score``; for callers that write their other outputs first.

        Args:
            column: the label column.
            preds: the predictions.
            labels, templates: what made them (recorded in the manifest).
        """
        self._writer.predictions(column, preds, labels, templates)

    # -- captions (MAGIC) -----------------------------------------------------------------------
    def caption_targets(
        self, where: str | None = None, write_column: str | None = None, overwrite: bool = False
    ) -> np.ndarray:
        """Ids that :meth:`caption` would caption; checks the filter and the target column
        (name, kind, writability) so that mistakes fail before any model loads.

        Args:
            where, write_column, overwrite: as for :meth:`caption`.
        """
        from vlmsearch.caption.run import caption_targets

        return caption_targets(self.reader, where, write_column, overwrite)

    def caption(
        self,
        captioner: Any,
        *,
        where: str | None = None,
        write_column: str | None = None,
        overwrite: bool = False,
        commit_every: int = 16,
        progress: ProgressFn | None = None,
        ids: np.ndarray | None = None,
    ) -> list[tuple[int, str]]:
        """Caption stored images from their stored vectors (nothing is re-encoded); returns
        ``(id, caption)`` pairs.

        Args:
            captioner: a :class:`~vlmsearch.caption.captioner.Captioner`.
            where: a SQL filter over the metadata.
            write_column: commit the captions as this column, every ``commit_every``
                images (and when interrupted); rows that already have one are skipped
                unless ``overwrite``, so an interrupted run resumes where it stopped.
            overwrite: caption rows that have a caption already.
            commit_every: images per commit.
            progress: called per image.
            ids: the targets from :meth:`caption_targets` (saves computing them again).
        """
        from vlmsearch.caption.run import caption_stored

        if ids is None:
            ids = self.caption_targets(where, write_column, overwrite)

        def write(values: dict[int, str]) -> None:
            assert write_column
            self._write_text_column(write_column, values, captioner.describe())

        out = caption_stored(
            self.reader, captioner, ids, write if write_column else None, commit_every, progress
        )
        if write_column and out:
            self.text_vectors(write_column, progress)  # embedded now, so searches start warm
        return out

    # -- writes ---------------------------------------------------------------------------------
    def _write_text_column(self, column: str, values: dict[int, str], info: dict[str, Any]) -> None:
        self._writer.text_column(column, values, info)

    def _commit_text_vectors(self, column: str, tv: TextVectors, info: dict[str, Any]) -> None:
        self._writer.text_vectors(column, tv, info)

    def save_region_student(self, student: Any, info: dict[str, Any]) -> None:
        """Store a trained region student (see :mod:`vlmsearch.rerank.region.student`).

        Args:
            student: the trained student.
            info: what it was trained with (recorded in the manifest).
        """
        self._writer.commit(student=(student, info))
