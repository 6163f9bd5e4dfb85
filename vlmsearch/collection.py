"""The Python API: :class:`Collection` opens, indexes, searches and classifies.

>>> from vlmsearch import Collection
>>> coll = Collection.index("~/Pictures")                       # doctest: +SKIP
>>> coll.search("a dog on a beach", k=10, where="width >= 1024")  # doctest: +SKIP

A facade: it reads through a :class:`~vlmsearch.storage.reader.CollectionReader` and hands
each job to ingest, search, rerank, caption or :mod:`~vlmsearch.storage.extra_writes`.
Why it is over 400 lines: about 220 of them are the ``Args:`` of the public API, which the
docs' Python API page points to; the code of each method is one or two delegating calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.caption.ocr_run import OcrResult, ocr_stored
from vlmsearch.caption.run import COMMIT_WAIT_S, caption_stored, caption_targets
from vlmsearch.ingest.indexing import index_folder
from vlmsearch.ingest.manifest import check_encoder_matches
from vlmsearch.ingest.options import IngestOptions, IngestReport
from vlmsearch.ingest.source_options import configure_sources
from vlmsearch.models.encoders import DEFAULT_KIND
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.rerank import apply
from vlmsearch.rerank.base import RerankQuery
from vlmsearch.rerank.view import ReaderView
from vlmsearch.results import Hit as Hit
from vlmsearch.results import Prediction, ProgressFn
from vlmsearch.search import calibration, duplicates, fused, ocr_lines, vector_search, video_hits
from vlmsearch.search.classify import classify_files as classify_files
from vlmsearch.search.classify import classify_stored
from vlmsearch.search.evaluate import classify_eval, index_eval, retrieval
from vlmsearch.search.evaluate.report import EvalReport
from vlmsearch.search.ordering import check_order, order_hits
from vlmsearch.search.preflight import check_search
from vlmsearch.search.query import positive_text, query_vector, search_terms
from vlmsearch.search.query_encoders import QueryEncoders, encoder_for_model
from vlmsearch.storage.column_vectors import TextVectors
from vlmsearch.storage.extra_writes import ExtraWriter, check_writable_columns
from vlmsearch.storage.layout import Layout, set_manifest_key
from vlmsearch.storage.locate import locate_collection as locate_collection
from vlmsearch.storage.locate import resolve_collection_path
from vlmsearch.storage.reader import CollectionReader


def _delegated(owner: str, name: str, settable: bool = False, doc: str | None = None) -> Any:
    """A property that reads (and, if ``settable``, sets) ``self.<owner>.<name>``."""

    def set_(self: Collection, value: Any) -> None:
        setattr(getattr(self, owner), name, value)

    getter = lambda self: getattr(getattr(self, owner), name)  # noqa: E731
    return property(getter, set_ if settable else None, doc=doc or f"See ``{owner}.{name}``.")


def _reader_attr(name: str, settable: bool = False) -> Any:
    return _delegated("reader", name, settable)


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
        # what rerankers read: the stored data and the encoder, never this object
        self.view = ReaderView(self.reader, lambda: self.encoder)
        configure_sources(self.reader.manifest, self.reader.root)

    # the stored data (the reader follows newer commits when a writer collects its files)
    manifest = _reader_attr("manifest")
    table = _reader_attr("table", settable=True)
    filter_budget = _reader_attr("filter_budget", settable=True)  # None: no time limit
    index_is_stale = _reader_attr("index_is_stale")
    moves = _reader_attr("moves")  # times a lazy load moved to a newer commit
    path = _reader_attr("path")
    root = _reader_attr("root")
    dim = _reader_attr("dim")
    sparse = _reader_attr("sparse")
    vectors = _reader_attr("vectors")
    faiss_index = _reader_attr("faiss_index")
    rows = _reader_attr("rows")
    lookup_file = _reader_attr("lookup_file")
    live_ids = _reader_attr("live_ids")
    filter_ids = _reader_attr("filter_ids")
    # what tests inspect: caches, and whether the torch encoder was built
    _filter = _reader_attr("loaded_filter")
    _vectors = _reader_attr("loaded_vectors")
    _encoder = _delegated("_encoders", "loaded")
    _image_queries = _delegated("_encoders", "image_queries")
    _query_encoder = _delegated("_encoders", "for_terms")
    encoder = _delegated("_encoders", "encoder", doc="The collection's encoder, built on use.")
    # set by the server: nothing is committed (text-column embeddings stay in memory)
    read_only = _delegated("_writer", "read_only", settable=True)
    # writes; methods of this object so that tests can make them fail
    _write_text_column = _delegated("_writer", "text_column")
    _commit_text_vectors = _delegated("_writer", "text_vectors")

    def __len__(self) -> int:
        return len(self.reader)

    def notify(self, note: str) -> None:
        """Show a line for the user through :attr:`on_notice`, else keep it in :attr:`notices`.

        Args:
            note: the line.
        """
        if self.on_notice is not None:
            self.on_notice(note)
        elif note not in self.notices and len(self.notices) < 100:  # bounded in a server
            self.notices.append(note)

    def info(self) -> dict[str, Any]:
        """What ``vlmsearch info`` shows: settings, counts, index, columns, bytes on disk."""
        return self.reader.info()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, device: str | None = None) -> Collection:
        """Open an existing collection.

        Args:
            path: the collection, or a folder indexed into one; default: see
                :func:`~vlmsearch.storage.locate.resolve_collection_path`.
            device: where models run (``cpu``, ``cuda``, ``auto``).
        """
        return cls(Layout(resolve_collection_path(path)), device=device)

    @classmethod
    def index(
        cls,
        root: str | Path | Sequence[str | Path],
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
        the run's report (its time includes model loading) in ``.last_report``.

        Args:
            root: the image folder; or dataset files (webdataset ``.tar`` shards, Parquet
                files with an image column) and folders, indexed under their common folder.
            collection: where it is indexed (default: ``root/.vlmsearch``).
            model, encoder_kind: without them an existing collection keeps its encoder
                (built only if a file must be encoded or a query export is missing) and a
                new one gets the default CLIP model, or the offline ASIF default when those
                weights cannot be loaded (said in the notices; manifest ``encoder_choice``).
            encoder: an already-loaded encoder to use instead.
            options: run settings (scan, batches, index type, repair).
            progress: called as the work goes.
            device, encoder_options: where models run; the encoder's settings (ASIF: k, p).
            text_onnx: export the towers to ONNX once per model, so queries skip torch.
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
        run.last_report.seconds = time.perf_counter() - t0  # model loading included
        coll.last_report = run.last_report
        return coll

    @classmethod
    def import_clip_retrieval(
        cls,
        folder: str | Path,
        collection: str | Path,
        encoder: Encoder,
        root: str | Path | None = None,
        options: IngestOptions | None = None,
        progress: ProgressFn | None = None,
    ) -> Collection:
        """Make a collection from a clip-retrieval ``inference`` output folder without
        encoding (see :mod:`vlmsearch.ingest.import_clip_retrieval`); an interrupted
        import of the same folder resumes. The run's report is in ``.last_report``.

        Args:
            folder: the folder holding ``img_emb/`` and ``metadata/``.
            collection: where the collection is written.
            encoder: the model that made the embeddings (its dimension must match).
            root: the folder image paths are relative to.
            options: index settings (``index``, ``memory_budget``).
            progress: called as the work goes.
        """
        from vlmsearch.ingest.import_clip_retrieval import import_clip_retrieval

        layout = Layout(Path(collection).expanduser())
        report = import_clip_retrieval(
            Path(folder).expanduser(),
            layout,
            encoder,
            Path(root).expanduser() if root else None,
            options,
            progress,
        )
        coll = cls(layout)
        coll._encoders.loaded = encoder
        coll.last_report = report
        return coll

    # -- encoders -------------------------------------------------------------------------------
    def use_encoder(self, encoder: Encoder) -> None:
        """Use an already-loaded encoder for queries; refused unless it matches the collection's.

        Args:
            encoder: the collection's model, built elsewhere (or wrapped, as the server does).
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
        min_score: float | None = None,
        sort: str | None = None,
        dedupe: bool | float = False,
        all_frames: bool = False,
    ) -> list[Hit]:
        """Text, image or combined search; every argument is checked, and query images
        decoded, before a model is built.

        Args:
            text, image: texts, image paths or PIL images, each with an optional rclip-style
                weight (``"2:a dog"``); negative, negative_image: what to move away from.
            k, where, params: as for :meth:`search_vector`.
            text_column, text_weight: also compare the query with this column's text (see
                :meth:`text_vectors`); score ``w * text + (1 - w) * image`` (1: text alone).
            rerank, rerank_options: a reranker spec (``"region"``, ``"coca:ARCH/TAG"``) and
                its options, or a loaded :class:`~vlmsearch.rerank.Reranker`.
            rerank_top: how many hits it rescores (default: the reranker's; 50, or 10 for
                the region teacher on a CPU); fusion, progress: see :meth:`rerank_hits`.
            min_score: keep only hits scoring at least this (a relevance cut-off).
            sort: order the kept hits by a metadata column (``"taken_at"``; ``"-taken_at"``
                newest first), ties in relevance order, nulls last; ranks are renumbered.
            dedupe: collapse near-duplicates, keeping the best-ranked of each group
                (True: cosine >= 0.94, clip-retrieval's; a float: that threshold); up to
                ``3 * k`` first-stage hits are drawn so that ``k`` remain.
            all_frames: keep every matching frame of a video (``index --video``); by
                default each video's best frame stands for it (``10 * k`` hits drawn).
        """
        threshold = duplicates.dedupe_threshold(dedupe)
        terms = search_terms(self.reader, k, text, image, negative, negative_image)
        check_search(self.reader, where=where, text_column=text_column, text_weight=text_weight)
        check_order(self.reader, min_score, sort)
        reranker, top = apply.load_for_search(
            rerank, rerank_top, self.view, self.device, rerank_options
        )
        vector = query_vector(self._query_encoder(terms), terms)
        first_k = max(k, top) if reranker is not None and top else k
        if threshold is not None:
            first_k = min(max(first_k, 3 * k), vector_search.MAX_K)
        collapse = not all_frames and video_hits.has_video(self.reader.column_names)
        if collapse:
            first_k = min(max(first_k, video_hits.DRAW * k), vector_search.MAX_K)
        if text_column is not None:
            hits = self.search_fused(vector, text_column, text_weight, first_k, where, params)
        else:
            hits = self.search_vector(vector, k=first_k, where=where, params=params)
            if reranker is None and all(t.kind == "text" and t.weight > 0 for t in terms):
                hits = calibration.calibrate_hits(hits, calibration.active(self.manifest))
        if threshold is not None:
            hits = duplicates.dedupe_hits(hits, self.reader.vectors.get, threshold)
        if collapse:
            hits = video_hits.best_frames(hits)
        if reranker is not None and top is not None:
            query = RerankQuery(positive_text(terms), vector, self.view)
            hits = self.rerank_hits(hits, reranker, query, top, fusion, progress)
        hits = order_hits(self.reader, hits[:k], min_score, sort)
        return ocr_lines.attach_lines(self.reader, hits, positive_text(terms), where, text_column)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """Nearest stored images to an embedding in this collection's space.

        Args:
            vector: the query embedding; k: how many hits.
            where: a SQL filter over the metadata (``"width >= 1024"``).
            params: index search parameters (``nprobe``, ``efSearch``).
        """
        return vector_search.search_vector(self.reader, vector, k, where, params)

    def similar(
        self, id: int, k: int = 10, where: str | None = None, params: dict[str, int] | None = None
    ) -> list[Hit]:
        """More like this: the stored images nearest to a stored image, itself left out. Its
        stored vector is the query, so nothing is decoded or encoded.

        Args:
            id: the stored image's id.
            k, where, params: as for :meth:`search_vector`.
        """
        return vector_search.similar(self.reader, id, k, where, params)

    def duplicates(
        self,
        threshold: float = duplicates.DEFAULT_THRESHOLD,
        where: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[duplicates.Group]:
        """Groups of near-duplicate stored images (cosine similarity >= ``threshold``,
        joined transitively), largest first; each suggests a keeper: the largest image,
        then the oldest file, then the lowest id. Nothing is decoded or encoded.

        Args:
            threshold: in (0, 1]; 0.94 is clip-retrieval's (CLIP models).
            where: a SQL filter over the metadata: only those rows are compared.
            progress: called with ("duplicates", rows done now, total rows).
        """
        return duplicates.stored_duplicates(self.reader, threshold, where, progress)

    def search_fused(
        self,
        vector: np.ndarray,
        text_column: str,
        text_weight: float = 1.0,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """Search a text column's embeddings, optionally fused with the image vectors (how
        candidates are chosen: :func:`vlmsearch.search.fused.search_fused`).

        Args:
            vector: the query embedding.
            text_column, text_weight: as for :meth:`search`.
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
        """Rescore the first hits with a reranker and sort them by the result; the rest follow
        in first-stage order, unchanged, and ``hit.scores`` keeps both parts.

        Args:
            hits: the first stage's hits, best first.
            reranker, query: a loaded :class:`~vlmsearch.rerank.Reranker` and a
                :class:`~vlmsearch.rerank.base.RerankQuery`.
            top: how many hits to rescore.
            fusion: None for the reranker's own score, else ``fusion * minmax(rerank) +
                (1 - fusion) * minmax(first stage)`` over the reranked hits.
            progress: called as the reranker goes.
        """
        view, note = self.view, self.notify
        return apply.rerank_hits(view, hits, reranker, query, top, fusion, progress, note)

    def text_vectors(
        self, column: str, progress: ProgressFn | None = None, save: bool = True
    ) -> TextVectors:
        """The embeddings of a text column's non-empty rows, brought up to date: new or changed
        texts are embedded with the collection's encoder.

        Args:
            column: the metadata column of texts (captions).
            progress: told as texts are embedded.
            save: commit new embeddings for later searches; when the collection cannot be
                written they stay in memory for this process, with a line in :attr:`notices`.
        """
        saver = self._commit_text_vectors if save and not self.read_only else None
        return fused.column_vectors(
            self.reader, column, lambda: self.encoder, saver, self.notices.append, progress
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
        preds, label_list = classify_stored(  # the text encoder: not built if all are cached
            self.reader, self._encoders.text, labels, templates, top_k, where, write_column, rule
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
        """Store :meth:`classify`'s predictions; for callers that write their other outputs
        first.

        Args:
            column: gets each best label, and ``column_score`` its score.
            preds: the predictions.
            labels, templates: what made them (recorded in the manifest).
        """
        self._writer.predictions(column, preds, labels, templates)

    # -- evaluation (vlmsearch eval) -----------------------------------------------------------
    def eval_retrieval(
        self, captions: str | Path, progress: ProgressFn | None = None, calibrate: bool = False
    ) -> EvalReport:
        """Text->image and image->text R@1/5/10 and median rank on a captions file.

        Args:
            captions: a CSV, Parquet or JSON-lines file with ``path`` (relative to the
                root, or absolute) and ``caption`` columns; several captions per image
                are allowed; paths not indexed are counted in the report's notes.
            progress: told as captions are embedded and ranked.
            calibrate: also fit a score calibration on these pairs and store it in the
                collection: text searches then score by it (see ``search.calibration``).
        """
        report = retrieval.evaluate_retrieval(
            self.reader, self._encoders.text, captions, progress, calibrate
        )
        if calibrate:
            set_manifest_key(self.layout, "calibration", report.metrics["calibration"])
            self.reader.manifest = {**self.manifest, "calibration": report.metrics["calibration"]}
        return report

    def eval_classify(
        self,
        labels_from: str | None = None,
        labels_from_path: str | None = None,
        templates: str = "openai",
        rule: str = "mean",
        progress: ProgressFn | None = None,
    ) -> EvalReport:
        """Zero-shot top-1/top-5 accuracy over the distinct true labels, and the most
        confused pairs.

        Args:
            labels_from: the metadata column holding each image's true label; or
            labels_from_path: a regex whose first group in the path is the label
                (underscores read as spaces).
            templates, rule: as for :meth:`classify`.
            progress: told as images are scored.
        """
        return classify_eval.evaluate_classify(
            self.reader, self._encoders.text, labels_from, labels_from_path, templates, rule,
            progress,
        )  # fmt: skip

    def eval_index(
        self,
        queries: int = index_eval.DEFAULT_QUERIES,
        k: int = index_eval.DEFAULT_K,
        seed: int = 0,
        params: dict[str, int] | None = None,
        progress: ProgressFn | None = None,
    ) -> EvalReport:
        """Recall@k of the ANN index against an exact scan, and its latency per query.

        Args:
            queries: how many stored vectors are sampled as queries (with ``seed``).
            k: the recall depth.
            params: index search parameters to measure (``nprobe``, ``efSearch``).
            progress: told per query.
        """
        return index_eval.evaluate_index(self.reader, queries, k, seed, params, progress)

    # -- captions (MAGIC) -----------------------------------------------------------------------
    def caption_targets(
        self,
        where: str | None = None,
        write_column: str | None = None,
        overwrite: bool = False,
        kind: str = "caption",
    ) -> np.ndarray:
        """Ids that :meth:`caption` (or, with ``kind="ocr"``, :meth:`ocr`) would read;
        checks the filter and the target column (name, kind, writability) so that
        mistakes fail before any model loads.

        Args:
            where, write_column, overwrite: as for :meth:`caption`.
            kind: ``caption`` or ``ocr``.
        """
        return caption_targets(self.reader, where, write_column, overwrite, kind)

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
        commit_wait_s: float = COMMIT_WAIT_S,
    ) -> list[tuple[int, str]]:
        """Caption stored images from their stored vectors (nothing is re-encoded); returns
        ``(id, caption)`` pairs.

        Args:
            captioner: a :class:`~vlmsearch.caption.captioner.Captioner`.
            where: a SQL filter over the metadata.
            write_column, commit_every: commit the captions as this column every so many
                images (and when interrupted); rows captioned there already are skipped
                unless ``overwrite``, so an interrupted run resumes where it stopped.
            progress: called per image.
            ids: the targets from :meth:`caption_targets` (not computed again).
            commit_wait_s: while another process writes the collection, each commit waits
                this long for it; then the run fails, saying how many rows it kept.
        """
        if ids is None:
            ids = self.caption_targets(where, write_column, overwrite)

        def write(values: dict[int, str]) -> None:
            self._write_text_column(str(write_column), values, captioner.describe(), commit_wait_s)

        to = write if write_column is not None else None
        out = caption_stored(self.reader, captioner, ids, to, commit_every, progress)
        if write_column and out:
            self.text_vectors(write_column, progress)  # embedded now, so searches start warm
        return out

    # -- text inside images (OCR) ---------------------------------------------------------------
    def ocr(
        self,
        engine: Any,
        *,
        where: str | None = None,
        write_column: str | None = "text",
        overwrite: bool = False,
        commit_every: int = 8,
        progress: ProgressFn | None = None,
        ids: np.ndarray | None = None,
        commit_wait_s: float = COMMIT_WAIT_S,
    ) -> list[OcrResult]:
        """Read the text inside stored images (each image is decoded again); the text goes
        to ``write_column``, each line's text, box and confidence to ``write_column_lines``.

        Args:
            engine: an :class:`~vlmsearch.models.ocr.OcrEngine`.
            where, overwrite, commit_every, progress, commit_wait_s: as for :meth:`caption`.
            write_column: None reads without storing; rows read there already are skipped
                unless ``overwrite`` (an interrupted run resumes). A file that cannot be
                read is left null there (read again next run), with its ``error``.
            ids: the targets from ``caption_targets(..., kind="ocr")``.
        """
        if ids is None:
            ids = caption_targets(self.reader, where, write_column, overwrite, kind="ocr")

        def write(values: dict[int, Any]) -> None:
            self._writer.ocr_column(str(write_column), values, engine.describe(), commit_wait_s)

        to = write if write_column is not None else None
        out = ocr_stored(self.reader, engine, ids, to, commit_every, progress)
        if write_column and out:
            self.text_vectors(write_column, progress)  # embedded now, so searches start warm
        return out

    def save_region_student(self, student: Any, info: dict[str, Any]) -> None:
        """Store a trained region student (see :mod:`vlmsearch.rerank.region.student`).

        Args:
            student: the trained student.
            info: how it was trained (recorded in the manifest).
        """
        self._writer.commit(student=(student, info))
