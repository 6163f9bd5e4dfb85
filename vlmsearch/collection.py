"""The Python API: :class:`Collection` opens, indexes, searches and classifies.

>>> from vlmsearch import Collection
>>> coll = Collection.index("~/Pictures")                       # doctest: +SKIP
>>> coll.search("a dog on a beach", k=10, where="width >= 1024")  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa

from vlmsearch import names
from vlmsearch.errors import CollectionError, QueryError
from vlmsearch.ingest.manifest import check_encoder_matches, readable_manifest
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.ingest.pipeline import ingest
from vlmsearch.models.choice import choose_encoder as choose_encoder_for
from vlmsearch.models.choice import parse_model_option
from vlmsearch.models.encoders import (
    DEFAULT_KIND,
    encoder_class,
    encoder_from_spec,
    load_encoder,
)
from vlmsearch.models.encoders.base import Encoder, TextEmbedder
from vlmsearch.models.label_cache import LazyTextEmbedder
from vlmsearch.models.lazy_encoder import LazyEncoder
from vlmsearch.models.zeroshot import (
    class_scores,
    class_weights,
    load_templates,
    parse_labels,
    probabilities,
    softmax_scores,
)
from vlmsearch.runtime import state_dir
from vlmsearch.search.query import Term, build_terms, decode_images, query_vector
from vlmsearch.storage import integrity, metadata, snapshot
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.plan import check_search_params, plan_index
from vlmsearch.storage.ann.postings import PostingIndex
from vlmsearch.storage.column_vectors import TextVectors, refresh
from vlmsearch.storage.filter_budget import FilterBudget
from vlmsearch.storage.layout import (
    DEFAULT_DIRNAME,
    Layout,
    default_collection_for,
    find_collection,
)
from vlmsearch.storage.store import CollectionWriter
from vlmsearch.storage.vectors import VectorTable

T = TypeVar("T")

# Below this many allowed rows a filtered query scans the allowed vectors exactly:
# cheaper than an ANN walk that skips most nodes, and it always fills k.
EXACT_SUBSET_MAX = 50_000
MAX_K = 10_000


@dataclass
class Hit:
    rank: int
    score: float
    id: int
    path: str  # absolute path of the image
    relpath: str  # path relative to the collection root
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the parts of a fused score, e.g. {"caption": 0.74, "image": 0.21} or
    # {"first": 0.31, "rerank": -12.5}
    scores: dict[str, float] | None = None
    reranker: str | None = None  # the reranker that scored this hit
    box: list[float] | None = None  # region rerankers: the best region, [x0, y0, x1, y1] pixels
    error: str | None = None  # why the reranker could not score this hit

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        for key in ("scores", "reranker", "box", "error"):
            if d[key] is None:
                del d[key]
        d.update(extra)
        return names.readable_data(d)  # a name that is not UTF-8 cannot go into JSON as is


@dataclass
class Prediction:
    id: int | None
    path: str
    label: str | None
    score: float | None
    top: list[tuple[str, float]]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": names.readable(self.path),
            "label": self.label,
            "score": self.score,
            "top": [{"label": lab, "score": s} for lab, s in self.top],
            "error": self.error,
        }


def _remember(path: Path) -> None:
    try:
        d = state_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / "last-collection").write_text(str(path), encoding="utf-8")
    except OSError:
        pass


def resolve_collection_path(path: str | Path | None) -> Path:
    """--collection, else $VLMSEARCH_COLLECTION, else .vlmsearch at or above the cwd,
    else the collection indexed last."""
    return locate_collection(path)[0]


def locate_collection(path: str | Path | None) -> tuple[Path, str]:
    """The collection a command uses and why: ``(path, source)``, where source says which
    rule chose it (``--collection``, ``$VLMSEARCH_COLLECTION``, ``nearest``, ``last indexed``)."""
    if path:
        p = Path(path).expanduser()
        # an indexed folder stands for the collection inside it
        if (
            not (p / "manifest.json").is_file()
            and (p / DEFAULT_DIRNAME / "manifest.json").is_file()
        ):
            return p / DEFAULT_DIRNAME, "--collection"
        return p, "--collection"
    env = os.environ.get("VLMSEARCH_COLLECTION")
    if env:
        return Path(env).expanduser(), "$VLMSEARCH_COLLECTION"
    found = find_collection()
    if found is not None:
        return found, "nearest"
    last = state_dir() / "last-collection"
    if last.is_file():
        p = Path(last.read_text(encoding="utf-8").strip())
        if (p / "manifest.json").is_file():
            return p, "last indexed"
    raise CollectionError(
        "no collection given: pass --collection PATH, set VLMSEARCH_COLLECTION, "
        "or run `vlmsearch index DIR` first"
    )


class Collection:
    """An indexed image folder: manifest, metadata, vectors and a FAISS index."""

    def __init__(self, layout: Layout, device: str | None = None) -> None:
        self.layout = layout
        self.device = device
        self.table: pa.Table
        self.manifest, self.table = snapshot.read_snapshot(layout)
        self._encoder: Encoder | None = None
        self._text_queries: TextEmbedder | Literal[False] | None = None  # False: none exported
        self._image_queries: Any = None  # the same for image queries (image_onnx)
        self._vectors: VectorTable | None = None
        self._index: Any = None
        self.index_is_stale = False
        self.moves = 0  # times a lazy load moved this object to a newer commit
        self.last_report: IngestReport | None = None
        # column -> (the metadata table they were checked against, embeddings)
        self._text_vectors: dict[str, tuple[pa.Table, TextVectors]] = {}
        # caches that stay valid while self.table is the same object (commits replace it)
        self._filter: metadata.MetadataFilter | None = None
        self.filter_budget: FilterBudget | None = None  # None: no time limit (the server sets one)
        self._row_index: tuple[pa.Table, np.ndarray, np.ndarray | None] | None = None
        self.notices: list[str] = []
        # set by the server: nothing is committed (text-column embeddings stay in memory)
        self.read_only = False
        # set by a caller that shows notes as they come (else they wait in self.notices)
        self.on_notice: Callable[[str], None] | None = None

    def notify(self, note: str) -> None:
        """A line for the user: shown now through :attr:`on_notice`, else kept in
        :attr:`notices`."""
        if self.on_notice is not None:
            self.on_notice(note)
        elif note not in self.notices and len(self.notices) < 100:  # bounded in a server
            self.notices.append(note)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, device: str | None = None) -> Collection:
        """Open an existing collection (see :func:`resolve_collection_path` for the default)."""
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
        """Index (or update) the images under ``root``; returns the opened collection.

        With ``text_onnx`` the encoder's text (and image) towers are also exported to ONNX
        once per model (cached; see :mod:`vlmsearch.search.query_encoders`), so that later
        queries need not import torch. An existing collection's encoder is built only when
        a file must be encoded or an export is missing.

        Without ``model``/``encoder_kind``, an existing collection keeps its own encoder
        and a new one uses the default CLIP model, or -- when those CLIP weights cannot be
        loaded and the offline extra is installed -- the offline ASIF default (said in
        ``last_report.notices``, and passed to ``on_notice`` as soon as it is made, before
        any file is read; recorded in the manifest as ``encoder_choice``).
        The run's report is in ``.last_report``.
        """
        t0 = time.perf_counter()
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise CollectionError(f"not a directory: {root_path}")
        layout = Layout(collection or default_collection_for(root_path))
        layout.check_writable()  # before any model loads
        opts = options or IngestOptions()
        notices: list[str] = []
        model, encoder_kind = parse_model_option(model, encoder_kind)
        source: LazyEncoder | None = LazyEncoder.ready(encoder) if encoder is not None else None
        if encoder is None:
            existing = None
            if layout.exists():  # --rebuild starts over even from a damaged manifest
                found = readable_manifest(layout) if opts.rebuild else layout.read_manifest()
                existing = found["encoder"] if found else None
            keep = (
                existing is not None
                and not opts.rebuild
                and model is None
                and not encoder_options
                and encoder_kind in (None, existing.get("kind"))
            )
            if (
                existing is not None
                and not keep
                and existing.get("kind") == "asif"
                and encoder_kind in (None, "asif")
            ):
                # ASIF options on an ASIF collection change only what they name
                model, encoder_options = asif_defaults_from(existing, model, encoder_options)
                encoder_kind = "asif"
            if keep:
                assert existing is not None
                spec = existing
                encoder_class(spec.get("kind", DEFAULT_KIND)).check_spec(spec)
                # built only if a file must be encoded or a query export is missing
                source = LazyEncoder(spec, lambda: encoder_from_spec(spec, device=device))
            else:
                t_load = time.perf_counter()
                loaded, notices = choose_encoder(
                    model, encoder_kind, device, encoder_options or {}, opts
                )
                source = LazyEncoder.ready(loaded)
                source.load_seconds = time.perf_counter() - t_load
                for note in notices if on_notice is not None else ():
                    on_notice(note)  # the model choice, said before the work starts
        assert source is not None
        report = ingest(layout, root_path, source, opts, progress)
        if text_onnx:
            from vlmsearch.search.query_encoders import prepare_query_exports

            notices += prepare_query_exports(source)
        report.notices = notices + report.notices  # (those of a --repair first)
        _remember(layout.path)
        coll = cls(layout, device=device)
        coll._encoder = source.loaded
        report.load_seconds = source.load_seconds
        report.seconds = time.perf_counter() - t0  # everything: model loading included
        coll.last_report = report
        return coll

    # -- properties ---------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def root(self) -> Path:
        return Path(self.manifest["root"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> Encoder:
        """The collection's own encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = encoder_from_spec(self.manifest["encoder"], device=self.device)
        return self._encoder

    def _query_encoder(self, terms: Sequence[Term]) -> TextEmbedder:
        """The encoder for these query terms: :meth:`_text_encoder` for text alone, else
        the collection's encoder."""
        if all(t.kind == "text" for t in terms):
            first = self._text_queries is None
            enc = self._text_encoder()
            if first and enc is self._text_queries:
                _ = self.faiss_index  # loads while the ONNX session loads in its thread
            return enc
        light = self._image_query_encoder(any(t.kind == "text" for t in terms))
        return light if light is not None else self.encoder

    def _image_query_encoder(self, with_text: bool) -> Any:
        """On the CPU, before the torch encoder is built: the image tower's ONNX export
        (with the text export when the query has texts), else None."""
        if self._encoder is not None or self.device not in (None, "auto", "cpu"):
            return None
        texts = self._text_encoder() if with_text else None
        if self._encoder is not None:
            return None  # the text side needed torch: use it for the images too
        if self._image_queries is None:
            spec = self.manifest["encoder"]
            cls = encoder_class(spec.get("kind", DEFAULT_KIND))
            self._image_queries = cls.image_query_encoder(spec, None) or False
            if self._image_queries:
                _ = self.faiss_index  # loads while the ONNX session loads in its thread
                problem = self._image_queries.tower.load_error()
                if problem:  # a damaged export: torch it is
                    self.notify(f"image queries use torch (cached ONNX image tower: {problem})")
                    self._image_queries = False
        if not self._image_queries:
            return None
        if texts is None:
            return self._image_queries
        import copy

        paired = copy.copy(self._image_queries)  # shared by concurrent server queries
        paired.texts = texts
        return paired

    def _text_encoder(self) -> TextEmbedder:
        """What embeds texts: on the CPU, the text tower's ONNX export when there is one (no
        torch import: a cold query takes about a second, not several); otherwise the
        collection's encoder."""
        if self._encoder is None and self.device in (None, "auto", "cpu"):
            if self._text_queries is None:
                spec = self.manifest["encoder"]
                cls = encoder_class(spec.get("kind", DEFAULT_KIND))
                self._text_queries = cls.text_query_encoder(spec) or False
            if self._text_queries:
                return self._text_queries
        return self.encoder

    def use_encoder(self, encoder: Encoder) -> None:
        """Use an already-loaded encoder; refused unless it matches the collection's."""
        check_encoder_matches(self.manifest, encoder, "the query")
        self._encoder = encoder

    def check_model(self, model: str, kind: str = DEFAULT_KIND) -> None:
        """Refuse a query model that differs from the collection's; decided from names and
        file hashes where possible, so the model is then not built here at all."""
        from vlmsearch.search.preflight import model_matches

        spec = self.manifest["encoder"]
        asked, parsed = parse_model_option(model, None)  # "asif[:ANCHORS]" names ASIF
        kind = parsed or kind
        if model_matches(self.manifest, model, kind):
            return  # the collection's own model: nothing to build here
        options: dict[str, Any] = {}
        if kind == "asif":  # k, p and the towers are the collection's unless named
            asked, options = asif_defaults_from(spec, asked, None)
        assert asked is not None
        self.use_encoder(load_encoder(asked, kind=kind, device=self.device, **options))

    # -- storage ------------------------------------------------------------------------------
    def live_ids(self) -> np.ndarray:
        return self.filter_ids(None)

    def filter_ids(self, where: str | None) -> np.ndarray:
        """Sorted ids of the 'ok' rows satisfying ``where``, from a DuckDB copy of the
        metadata kept for this table version (built once: ~0.3 s at 1M rows)."""
        f = self._filter
        if f is None or f.table is not self.table:
            if f is not None:
                f.close()
            f = self._filter = metadata.MetadataFilter(self.table, self.filter_budget)
        return f.ids(where)

    @property
    def sparse(self) -> bool:
        """Sparse vectors (ASIF): searched with posting lists instead of FAISS."""
        return self.manifest.get("vectors") == "sparse"

    def _read(self, name: str, reader: Any) -> Any:
        """``reader(path)`` of a file the manifest names, verified first (see
        :mod:`vlmsearch.storage.integrity`): damage is a one-line CollectionError."""
        return integrity.read_checked(self.layout.path, self.manifest, name, reader)

    @property
    def vectors(self) -> VectorTable:
        if self._vectors is None:

            def load() -> VectorTable:
                for shard in self.manifest.get("shards", []):
                    for name in integrity.shard_files(shard, self.sparse):
                        integrity.verify(self.layout.path, self.manifest, name)
                return VectorTable.load(
                    self.layout.vectors_dir,
                    self.manifest.get("shards", []),
                    self.dim,
                    self.live_ids(),
                    sparse=self.sparse,
                )

            self._vectors = self._load_current(load)
        return self._vectors

    @property
    def faiss_index(self) -> Any:
        """The stored index; an in-memory exact index when the stored one is behind the data
        (an interrupted run that had not reached its index step)."""
        if self._index is None:
            self._index = self._load_current(self._read_index)
        return self._index

    def _read_index(self) -> Any:
        info = self.manifest.get("index") or {}
        current = info.get("file") and int(info.get("generation", -1)) >= int(
            self.manifest.get("data_generation", 0)
        )
        if current:
            path = self.layout.file(info["file"])
            if path.is_file():
                # verified first: a damaged index is a one-line error naming it
                reader = PostingIndex.read if self.sparse else faiss_store.read_index
                return self._read(info["file"], reader)
            if snapshot.newer_manifest(self.layout, self.manifest) is not None:
                raise FileNotFoundError(errno.ENOENT, "collected by a newer commit", str(path))
        # no index, or one behind the data (or deleted): exact search over the vectors
        self.index_is_stale = True
        vt = self.vectors
        if self.sparse:
            return PostingIndex.build(vt.ids, vt.vectors)
        plan = plan_index("flat", len(vt), self.dim)
        return faiss_store.build_index(plan, self.dim, vt.ids, vt.vectors.astype(np.float32))

    def _load_current(self, load: Callable[[], T]) -> T:
        """``load()`` from this object's commit; when a newer commit has since collected a
        file it needs, this object moves to that commit (manifest, table, caches) and
        loads again: a reader never fails because of a writer."""
        for _ in range(snapshot.ATTEMPTS):
            try:
                return load()
            except (FileNotFoundError, integrity.MissingFileError):
                newer = snapshot.reread(self.layout, self.manifest)
                if newer is None:
                    raise
                self.manifest, self.table = newer
                self.moves += 1
                self._vectors = self._index = None
                self._text_vectors.clear()
                self.index_is_stale = False
        return load()

    def __len__(self) -> int:
        return int(self.manifest.get("counts", {}).get("ok", 0))

    # -- search -------------------------------------------------------------------------------
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
        """Text, image or combined search. Terms take rclip-style weights (``"2:a dog"``).

        ``rerank`` (a spec such as ``"region"`` or ``"coca:ARCH/TAG"``, or a loaded
        :class:`~vlmsearch.rerank.Reranker`) rescores the first stage's top
        ``rerank_top`` hits (default: the reranker's, 50; 10 for the region teacher on a
        CPU); see :meth:`rerank_hits` for ``fusion``.

        With ``text_column`` the query is also compared with that metadata column's text
        (captions, embedded once and stored; see :meth:`text_vectors`). The score is then
        ``text_weight * caption score + (1 - text_weight) * image score``: 1 (the default)
        searches the captions alone, 0.5 weighs both equally."""
        from vlmsearch.search.preflight import check_search

        terms = build_terms(
            _as_list(text), _as_list(image), _as_list(negative), _as_list(negative_image)
        )
        self._require_vectors()
        if k < 1:
            raise QueryError(f"k must be at least 1 (got {k})")
        # every argument is checked, and query images decoded, before a model is built
        terms = decode_images(terms)
        check_search(
            self,
            where=where,
            text_column=text_column,
            text_weight=text_weight,
            rerank=rerank,
            rerank_top=rerank_top,
        )
        reranker = None
        if rerank is not None:
            from vlmsearch.rerank import load_reranker

            reranker = (
                load_reranker(rerank, device=self.device, **(rerank_options or {}))
                if isinstance(rerank, str)
                else rerank
            )
            if rerank_top is None:
                rerank_top = reranker.default_top(self)
        vector = query_vector(self._query_encoder(terms), terms)
        first_k = max(k, rerank_top) if reranker is not None and rerank_top else k
        if text_column is not None:
            hits = self.search_fused(
                vector, text_column, text_weight, k=first_k, where=where, params=params
            )
        else:
            hits = self.search_vector(vector, k=first_k, where=where, params=params)
        if reranker is None:
            return hits
        from vlmsearch.rerank.base import RerankQuery

        assert rerank_top is not None
        texts = [str(t.value) for t in terms if t.kind == "text" and t.weight > 0]
        query = RerankQuery(" ".join(texts) or None, vector, self)
        return self.rerank_hits(hits, reranker, query, rerank_top, fusion, progress)[:k]

    def rerank_hits(
        self,
        hits: list[Hit],
        reranker: Any,
        query: Any,
        top: int = 50,
        fusion: float | None = None,
        progress: ProgressFn | None = None,
    ) -> list[Hit]:
        """Rescore the first ``top`` hits with ``reranker`` and sort them by the result.

        The final score is the reranker's own (``fusion`` None), or ``fusion * minmax(rerank)
        + (1 - fusion) * minmax(first stage)`` over the reranked hits. ``hit.scores`` keeps
        both parts. Hits below ``top`` follow, in first-stage order, unchanged."""
        from vlmsearch.rerank.base import Candidate, fuse

        if top < 1:
            raise QueryError(f"--rerank-top must be at least 1 (got {top})")
        if reranker.needs_text and not query.text:
            raise QueryError(f"the {reranker.kind} reranker needs a text query")
        head, tail = hits[:top], hits[top:]
        if not head:
            return hits
        note = reranker.plan_note(self, len(head)) if hasattr(reranker, "plan_note") else None
        if note:
            self.notify(note)
        result = reranker.score(query, [Candidate(h.id, h.path, h.score) for h in head], progress)
        first = np.asarray([h.score for h in head], np.float64)
        final = fuse(first, result.scores, fusion)
        order = np.argsort(-final, kind="stable")
        out = []
        for rank, j in enumerate(order.tolist(), start=1):
            h = head[j]
            h.scores = {"first": float(first[j]), "rerank": float(result.scores[j])}
            h.score, h.rank, h.reranker = float(final[j]), rank, result.by or reranker.name
            box = result.boxes[j] if result.boxes else None
            h.box = [round(float(v), 1) for v in box] if box is not None else None
            h.error = result.errors.get(j)
            out.append(h)
        for rank, h in enumerate(tail, start=len(out) + 1):
            h.rank = rank
            out.append(h)
        return out

    def save_region_student(self, student: Any, info: dict[str, Any]) -> None:
        """Store a trained region student (see :mod:`vlmsearch.rerank.region.student`)."""
        self._commit_extra(student=(student, info))

    def _commit_extra(
        self,
        ids: np.ndarray | None = None,
        columns: dict[str, pa.Array] | None = None,
        column_info: dict[str, dict[str, Any]] | None = None,
        **commit: Any,
    ) -> None:
        """Commit what is added beside the vectors -- metadata ``columns`` for ``ids`` (with
        their manifest ``column_info``), or side files passed on to
        :meth:`CollectionWriter.commit` -- under the writer lock, on top of the latest
        committed state."""
        if self.read_only:
            raise CollectionError(f"collection {self.path} is open read-only here")
        with self.layout.lock():
            manifest = self.layout.read_manifest()
            name = manifest.get("metadata_file")
            table = (
                integrity.read_checked(self.layout.path, manifest, name, metadata.read_table)
                if name
                else self.table
            )
            for name, values in (columns or {}).items():
                assert ids is not None
                table = metadata.set_column(table, name, ids, values)
            writer = CollectionWriter(self.layout, manifest, table)
            writer.previous = manifest
            if column_info:
                writer.manifest["columns"] = {**(manifest.get("columns") or {}), **column_info}
            writer.commit(data_changed=False, **commit)
            self.manifest, self.table = writer.manifest, writer.table

    @snapshot.on_one_commit
    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """Nearest stored images to an embedding in this collection's space."""
        q = self._query_row(vector, k)
        n = len(self)
        index_info = self.manifest.get("index") or {}
        check_search_params(params, index_info.get("factory", ""), self.sparse)
        params = {**index_info.get("search_params", {}), **(params or {})}
        allowed = None
        if where and where.strip():
            # ids without a stored vector are never returned by the index, so only the
            # paths that read the vector table need the intersection (it loads the table)
            allowed = self.filter_ids(where)
            if self.sparse:
                allowed = sorted_intersection(allowed, self.vectors.ids)
            if len(allowed) == 0:
                return []
        k = min(k, MAX_K, n if allowed is None else len(allowed))
        if self.sparse:
            scores, ids = self.faiss_index.search(q[0], k, allowed)
            return self._hits(ids, scores)
        if allowed is not None:
            # IVF-Flat: more lists, distances for allowed ids only; no vector table read
            wider = faiss_store.filtered_params(
                self.faiss_index, params, len(allowed) / max(int(self.faiss_index.ntotal), 1)
            )
            if wider is not None:
                params = wider
            elif len(allowed) <= EXACT_SUBSET_MAX:
                return self._exact_hits(q[0], k, allowed)
        d, i = faiss_store.search(self.faiss_index, q, k, params, allowed)
        scores, ids = d[0], i[0]
        keep = ids >= 0
        if allowed is not None and keep.sum() < k:
            return self._exact_hits(q[0], k, allowed)  # ANN under-filled the filter
        return self._hits(ids[keep], scores[keep])

    def _exact_hits(self, q: np.ndarray, k: int, allowed: np.ndarray) -> list[Hit]:
        allowed = sorted_intersection(allowed, self.vectors.ids)
        if len(allowed) == 0:
            return []
        return self._hits(*self._exact(q, min(k, len(allowed)), allowed)[::-1])

    @snapshot.on_one_commit
    def similar(
        self,
        id: int,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """"More like this": the stored images nearest to stored image ``id``, itself left
        out. Its stored vector is the query, so nothing is decoded or encoded."""
        self._require_vectors()
        try:
            vector = self.vectors.dense(np.asarray([int(id)], np.int64))[0]
        except KeyError:
            raise QueryError(f"no indexed image with id {id}") from None
        hits = [h for h in self.search_vector(vector, k + 1, where, params) if h.id != id][:k]
        for rank, h in enumerate(hits, start=1):
            h.rank = rank
        return hits

    def _query_row(self, vector: np.ndarray, k: int) -> np.ndarray:
        if k < 1:
            raise QueryError(f"k must be at least 1 (got {k})")
        self._require_vectors()
        q = np.asarray(vector, np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise QueryError(f"query vector has dim {q.shape[1]}, collection has {self.dim}")
        return q

    @snapshot.on_one_commit
    def search_fused(
        self,
        vector: np.ndarray,
        text_column: str,
        text_weight: float = 1.0,
        k: int = 10,
        where: str | None = None,
        params: dict[str, int] | None = None,
    ) -> list[Hit]:
        """Search a text column's embeddings, optionally fused with the image vectors.

        ``text_weight`` w in [0, 1] gives ``w * text score + (1 - w) * image score``; rows
        without text score 0 on the text side. Candidates are every allowed row when at
        most :data:`EXACT_SUBSET_MAX` (exact); otherwise the union of each side's top
        ``max(4k, 256)``, each rescored exactly on both sides."""
        if not 0.0 <= text_weight <= 1.0:
            raise QueryError(f"the text weight must lie in [0, 1] (got {text_weight})")
        q = self._query_row(vector, k)[0]
        tv = self.text_vectors(text_column)
        live = self.vectors.ids
        if where and where.strip():
            live = sorted_intersection(self.filter_ids(where), live)
        text_ids, text_scores = tv.ids, tv.scores(q)
        keep = np.isin(text_ids, live)
        text_ids, text_scores = text_ids[keep], text_scores[keep]
        if text_weight == 1.0:
            cand = text_ids
        elif len(live) <= EXACT_SUBSET_MAX:
            cand = live
        else:
            depth = max(4 * k, 256)
            top_text = text_ids[np.argsort(-text_scores, kind="stable")[:depth]]
            top_image = [h.id for h in self.search_vector(q, depth, where, params)]
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
                rows = self.vectors.get(cand[lo : lo + 8192])
                image[lo : lo + 8192] = np.asarray(rows @ q).ravel()
        fused = text_weight * caption + (1.0 - text_weight) * image
        top = np.argsort(-fused, kind="stable")[: min(k, MAX_K)]
        hits = self._hits(cand[top], fused[top])
        parts = {
            int(i): (float(caption[j]), float(image[j]))
            for j, i in zip(top, cand[top], strict=True)
        }
        for h in hits:
            c, m = parts[h.id]
            h.scores = {text_column: c} if text_weight == 1.0 else {text_column: c, "image": m}
        return hits

    # -- text columns ---------------------------------------------------------------------------
    def text_vectors(
        self, column: str, progress: ProgressFn | None = None, save: bool = True
    ) -> TextVectors:
        """The embeddings of a text column's non-empty rows, brought up to date.

        New or changed texts are embedded with the collection's encoder and, with ``save``,
        committed to the collection so that later searches reuse them. When the collection
        cannot be written (read-only, or another process is writing) they are kept in
        memory for this process only, with a line in :attr:`notices`."""
        self._check_text_column(column)
        hit = self._text_vectors.get(column)
        if hit is not None and hit[0] is self.table:
            return hit[1]  # nothing committed since: no need to digest every row again
        import pyarrow.compute as pc

        rows = self.table.filter(
            pc.and_(pc.equal(self.table["status"], "ok"), pc.is_valid(self.table[column]))
        )
        ids = rows["id"].to_numpy().astype(np.int64)
        texts = [str(t) for t in rows[column].to_pylist()]
        identity = Encoder.identity(self.manifest["encoder"])
        cached = hit[1] if hit is not None else None
        if cached is None:
            entry = (self.manifest.get("text_vectors") or {}).get(column) or {}
            cached = TextVectors.empty(self.dim, self.sparse)
            if entry.get("encoder") == identity and entry.get("file"):
                cached = self._read(entry["file"], TextVectors.read)
        tv, embedded = refresh(cached, ids, texts, self.encoder.encode_texts, self.sparse, progress)
        if save and not self.read_only and (embedded or len(tv) != len(cached)):
            info = {"encoder": identity, "encoder_name": self.manifest["encoder"].get("name")}
            try:
                self._commit_text_vectors(column, tv, info)
            except (CollectionError, OSError) as e:
                self.notices.append(f"embeddings of column {column!r} not saved: {e}")
        self._text_vectors[column] = (self.table, tv)
        return tv

    def _check_text_column(self, column: str) -> None:
        kinds = {c: (e or {}).get("kind") for c, e in (self.manifest.get("columns") or {}).items()}
        settings = {f"{c}_settings" for c, k in kinds.items() if k == "caption"}
        text_cols = [
            f.name
            for f in self.table.schema
            if f.name not in metadata.BASE_COLUMNS
            and f.name not in settings  # decoding settings (JSON), not text to search
            and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
        ]
        if column not in text_cols:
            known = ", ".join(text_cols) or "none yet; `vlmsearch caption --write-column` adds one"
            raise QueryError(f"no text column {column!r} in the metadata (text columns: {known})")

    def _commit_text_vectors(self, column: str, tv: TextVectors, info: dict[str, Any]) -> None:
        self._commit_extra(text_vectors={column: (tv, info)})

    def _exact(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(self.vectors.get(allowed) @ q).ravel()
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], allowed[top]

    def _require_vectors(self) -> int:
        n = len(self)
        if n == 0:
            raise CollectionError(
                f"collection {self.path} is empty: no image was indexed successfully "
                "(see `vlmsearch info`)"
            )
        return n

    def rows(self, ids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        """Metadata rows by id, found by binary search over the id column (kept per table
        version): an ``is_in`` scan of a 1M-row table costs ~20 ms a query."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0 or self.table.num_rows == 0:
            return {}
        cached = self._row_index
        if cached is None or cached[0] is not self.table:
            col = self.table["id"].to_numpy()
            order = None
            if len(col) > 1 and not bool(np.all(col[1:] > col[:-1])):
                order = np.argsort(col, kind="stable")
                col = col[order]
            cached = self._row_index = (self.table, col, order)
        _, col, order = cached
        pos = np.clip(np.searchsorted(col, ids), 0, len(col) - 1)
        pos = pos[col[pos] == ids]
        if order is not None:
            pos = order[pos]
        if len(pos) <= 64:
            # zero-copy one-row slices: ``take`` on a many-chunk Parquet table costs ~40 ms
            # even for 10 rows (1M rows, 2 shared cores)
            return {r["id"]: r for p in pos.tolist() for r in self.table.slice(p, 1).to_pylist()}
        sub = self.table.take(pa.array(pos, pa.int64()))
        return {r["id"]: r for r in sub.to_pylist()}

    def lookup_file(self, path: str | Path) -> int | None:
        """The id of the image at ``path`` if it is indexed and unchanged since (same size
        and mtime), so that its stored vector stands for it; otherwise None."""
        import pyarrow.compute as pc

        p = Path(path).expanduser().resolve()
        try:
            rel = p.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return None
        rows = self.table.filter(pc.equal(self.table["path"], names.readable(rel))).to_pylist()
        rows = [r for r in rows if names.row_path(r) == rel]
        if not rows or rows[0]["status"] != "ok":
            return None
        st = p.stat()
        if st.st_size != rows[0]["size"] or st.st_mtime_ns != rows[0]["mtime_ns"]:
            return None
        return int(rows[0]["id"])

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        rows = self.rows(ids)
        extra_cols = [c for c in self.table.column_names if c not in metadata.BASE_COLUMNS]
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
                    path=str(self.root / names.row_path(r)),
                    relpath=names.row_path(r),
                    width=r["width"],
                    height=r["height"],
                    extra={c: r[c] for c in extra_cols},
                )
            )
        return hits

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
        """Classify the stored vectors (no image is re-encoded); optionally store the labels
        as a metadata column so that ``where="COLUMN = 'label'"`` filters on them.
        ``rule``: ``mean`` (CLIP's averaged prompts) or ``best`` (ASIF's best prompt)."""
        from vlmsearch.models.zeroshot import RULES

        label_list = parse_labels(labels)
        # checked before the text encoder is built
        if write_column:
            self.check_label_column(write_column)
        if rule not in RULES:
            raise QueryError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
        tmpl = load_templates(templates)
        ids = self.vectors.ids
        if where and where.strip():
            ids = sorted_intersection(self.filter_ids(where), ids)
        probs = (
            softmax_scores(
                class_scores(
                    LazyTextEmbedder(self._text_encoder),  # not built when all are cached
                    self.vectors.get(ids),
                    label_list,
                    tmpl,
                    rule,
                    spec=self.manifest["encoder"],
                )
            )
            if len(ids)
            else np.zeros((0, 0))
        )
        preds = predictions(ids, probs, label_list, top_k, self.rows(ids), self.root)
        if write_column:
            self.write_predictions(write_column, preds, label_list, templates)
        return preds

    def check_label_column(self, column: str) -> None:
        """Refuse a ``write_column`` that cannot be written (bad name, collection locked or
        read-only) before anything is computed."""
        for name in (column, f"{column}_score"):
            metadata.check_column_name(name)
        with self.layout.lock():
            pass

    def write_predictions(
        self, column: str, preds: Sequence[Prediction], labels: list[str], templates: str
    ) -> None:
        """Store :meth:`classify`'s predictions (best label and its score) as ``column`` and
        ``column_score``; for callers that write their other outputs first."""
        ids = np.asarray([p.id for p in preds], np.int64)
        label_arr = pa.array([p.label for p in preds], pa.string())
        score_arr = pa.array([p.score for p in preds], pa.float32())
        info = {
            "kind": "zero-shot label",
            "labels": labels,
            "templates": templates,
            "encoder": self.manifest["encoder"].get("name"),
        }
        columns = {column: label_arr, f"{column}_score": score_arr}
        self._commit_extra(ids, columns, {column: info})

    # -- captions (MAGIC) ------------------------------------------------------------------------
    def caption_targets(
        self, where: str | None = None, write_column: str | None = None, overwrite: bool = False
    ) -> np.ndarray:
        """Ids that :meth:`caption` would caption; checks the filter and the target column
        (name, kind, writability) so that mistakes fail before any model loads."""
        if write_column:
            metadata.check_column_name(write_column)
            kind = ((self.manifest.get("columns") or {}).get(write_column) or {}).get("kind")
            taken = [
                c
                for c in (write_column, f"{write_column}_settings")
                if c in self.table.column_names
            ]
            if taken and kind != "caption":
                raise QueryError(
                    f"column {taken[0]!r} already holds {kind or 'other data'}, not "
                    "captions; choose another --write-column"
                )
            with self.layout.lock():  # writable and not being written: checked up front
                pass
        ids = self.vectors.ids
        if where and where.strip():
            table = self.table
            if write_column and write_column not in table.column_names:
                # the first run of `--where "caption IS NULL" --write-column caption`
                table = table.append_column(write_column, pa.nulls(table.num_rows, pa.string()))
            ids = np.intersect1d(metadata.filter_ids(table, where), ids)
        if write_column and write_column in self.table.column_names and not overwrite:
            done = metadata.filter_ids(self.table, f"{write_column} IS NOT NULL")
            ids = np.setdiff1d(ids, done)
        return ids

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
        """Caption stored images from their stored vectors (nothing is re-encoded).

        With ``write_column``, captions are committed every ``commit_every`` images (and
        when interrupted), and rows that already have a caption there are skipped unless
        ``overwrite``: an interrupted run resumes where it stopped. ``ids`` (from
        :meth:`caption_targets`) saves computing the targets again."""
        if ids is None:
            ids = self.caption_targets(where, write_column, overwrite)
        out: list[tuple[int, str]] = []
        pending: dict[int, str] = {}
        try:
            for i in ids.tolist():
                cap = captioner.caption_vector(self.vectors.dense(np.asarray([i]))[0])
                out.append((int(i), cap.text))
                pending[int(i)] = cap.text
                if write_column and len(pending) >= commit_every:
                    self._write_text_column(write_column, pending, captioner.describe())
                    pending.clear()
                if progress:
                    progress("caption", 1, len(ids))
        finally:  # an interrupted run (Ctrl-C) keeps every caption it made
            if write_column and pending:
                self._write_text_column(write_column, pending, captioner.describe())
        if write_column and out:
            self.text_vectors(write_column, progress)  # embedded now, so searches start warm
        return out

    def _write_text_column(self, column: str, values: dict[int, str], info: dict[str, Any]) -> None:
        import json

        ids = np.fromiter(values, np.int64, len(values))
        arr = pa.array([values[i] for i in ids.tolist()], pa.string())
        # the settings are kept per row too: a resumed run may have used other ones
        settings = pa.array([json.dumps(info, sort_keys=True)] * len(ids), pa.string())
        columns = {column: arr, f"{column}_settings": settings}
        self._commit_extra(ids, columns, {column: {"kind": "caption", **info}})

    # -- info -----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        sizes: dict[str, int] = {}
        total = 0
        for p in self.layout.path.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                kind = p.name.split("-")[0] if "-" in p.name else p.name
                sizes[kind] = sizes.get(kind, 0) + p.stat().st_size
                total += p.stat().st_size
        m = self.manifest
        idx = m.get("index") or {}
        return {
            "collection": str(self.path),
            "root": m.get("root"),
            "format_version": m.get("format_version"),
            "vlmsearch_version": m.get("vlmsearch_version"),
            "encoder": m.get("encoder"),
            "encoder_choice": m.get("encoder_choice"),
            "dim": m.get("dim"),
            "metric": m.get("metric"),
            "preprocessing": m.get("preprocessing"),
            "counts": m.get("counts"),
            "index": {
                k: idx.get(k) for k in ("requested", "factory", "search_params", "ntotal", "reason")
            },
            "index_current": bool(idx)
            and int(idx.get("generation", -1)) >= int(m.get("data_generation", 0)),
            "columns": [c for c in self.table.column_names if c not in metadata.BASE_COLUMNS],
            "text_vectors": {
                col: {"rows": e.get("rows"), "encoder": e.get("encoder_name")}
                for col, e in (m.get("text_vectors") or {}).items()
            },
            "generation": m.get("generation"),
            "created_at": m.get("created_at"),
            "updated_at": m.get("updated_at"),
            "bytes_on_disk": {"total": total, **sizes},
        }


def asif_defaults_from(
    spec: dict[str, Any], model: str | None, options: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """Fill unspecified ASIF settings (anchors, encoders, k, p) from an existing spec."""
    from vlmsearch.models.asif.encoder import DEFAULT_ANCHORS

    anchors = spec.get("anchors") or {}
    if model is None:
        model = DEFAULT_ANCHORS if anchors.get("default") else anchors.get("path")
    opts = dict(options or {})
    opts.setdefault("k", spec.get("k"))
    if "p" not in opts:
        opts.setdefault("p_image", spec.get("p_image", spec.get("p")))
        opts.setdefault("p_text", spec.get("p_text", spec.get("p")))
    if model == (DEFAULT_ANCHORS if anchors.get("default") else anchors.get("path")):
        opts.setdefault("image_encoder", (spec.get("image_encoder") or {}).get("name"))
        opts.setdefault("text_encoder", (spec.get("text_encoder") or {}).get("name"))
    return str(model), {k: v for k, v in opts.items() if v is not None}


def choose_encoder(
    model: str | None,
    kind: str | None,
    device: str | None,
    encoder_options: dict[str, Any],
    opts: IngestOptions,
) -> tuple[Encoder, list[str]]:
    """The encoder for a new (or rebuilt) collection, and notices for the user (the rule
    is :func:`vlmsearch.models.choice.choose_encoder`'s; why is kept in ``opts``)."""
    choice = choose_encoder_for(model, kind, device, encoder_options)
    if choice.record is not None:
        opts.encoder_choice = choice.record
    return choice.encoder, choice.notices


def predictions(
    ids: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    top_k: int,
    rows: dict[int, dict[str, Any]],
    root: Path,
) -> list[Prediction]:
    out = []
    k = max(1, min(top_k, len(labels)))
    for n, i in enumerate(ids.tolist()):
        order = np.argsort(-probs[n])[:k]
        top = [(labels[j], float(probs[n, j])) for j in order]
        r = rows.get(i, {})
        rel = names.row_path(r) if r else ""
        out.append(Prediction(i, str(root / rel), top[0][0], top[0][1], top))
    return out


def classify_files(
    paths: Sequence[str | Path],
    labels: Sequence[str],
    *,
    model: str | None = None,
    encoder: Encoder | None = None,
    templates: str = "openai",
    top_k: int = 1,
    rule: str = "mean",
    batch_size: int = 64,
    workers: int | None = None,
    device: str | None = None,
    notices: list[str] | None = None,
) -> list[Prediction]:
    """Zero-shot classify image files (and folders, recursively), encoding them now with
    ``encoder``, else the one :func:`vlmsearch.models.choice.choose_encoder` picks for
    ``model`` (why, when it is not the one asked for, is appended to ``notices``)."""
    from vlmsearch.imaging.decode import DecodeTask, iter_decoded
    from vlmsearch.imaging.scan import scan

    files: list[Path] = []
    for p in map(lambda x: Path(x).expanduser(), paths):
        if p.is_dir():
            files += [p / f.path for f in scan(p)]
        elif p.exists():
            files.append(p)
        else:
            raise CollectionError(f"no such file or directory: {p}")
    if not files:
        raise CollectionError("no image files found in the given paths")
    label_list = parse_labels(list(labels))
    enc = encoder
    if enc is None:
        choice = choose_encoder_for(model, None, device)
        enc = choice.encoder
        if notices is not None:
            notices += choice.notices
    tmpl = load_templates(templates)
    weights = class_weights(enc, label_list, tmpl, enc.spec) if rule == "mean" else None
    tasks = [DecodeTask(i, str(f)) for i, f in enumerate(files)]
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    out: list[Prediction] = []
    for records, pixels in iter_decoded(tasks, enc.image_transform(), batch_size, n_workers):
        probs = None
        if pixels is not None:
            vecs = enc.encode_pixels(pixels)
            probs = (
                probabilities(vecs, weights)
                if weights is not None
                else softmax_scores(class_scores(enc, vecs, label_list, tmpl, rule, enc.spec))
            )
        row = 0
        for rec in records:
            if rec.error is not None:
                out.append(Prediction(None, str(files[rec.index]), None, None, [], rec.error))
                continue
            assert probs is not None
            pred = predictions(
                np.asarray([-1]), probs[row : row + 1], label_list, top_k, {}, Path("/")
            )[0]
            pred.id, pred.path = None, str(files[rec.index])
            out.append(pred)
            row += 1
    return out


def sorted_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elements of sorted unique ``a`` also in sorted unique ``b``: a binary search per
    element of ``a`` (``np.intersect1d`` sorts both, ~0.1-0.8 s at 1M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64)
    pos = np.clip(np.searchsorted(b, a), 0, len(b) - 1)
    return a[b[pos] == a]


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, str | Path) or not isinstance(x, Sequence):
        return [x]
    return list(x)
