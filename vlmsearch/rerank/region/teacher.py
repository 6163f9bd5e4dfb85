"""Region reranking, ViLD-style (kind ``region``): an image's score for a query is the cosine
of its best-matching region, so a small object can carry a hit.

Teacher: class-agnostic proposals (multi-scale windows, or a detector's boxes), each crop
encoded by the collection's own image encoder at 1x and 1.5x context and the two
embeddings averaged (ViLD's ensemble). Student: when ``vlmsearch distill`` has trained one
for the collection, a RoIAlign head over one backbone pass per image gives every region's
embedding at once (see :mod:`vlmsearch.rerank.region.student`). Spec argument:
``region`` (student when there is one, else teacher), ``region:teacher``, ``region:student``.
Options: ``whole_weight`` mixes in the whole-image score, ``boxes`` a detector's boxes file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.rerank import register
from vlmsearch.rerank.base import (
    Box,
    Candidate,
    ProgressFn,
    Reranker,
    RerankQuery,
    RerankScores,
)
from vlmsearch.rerank.region.crops import crop_seconds, teacher_embeddings
from vlmsearch.rerank.region.proposals import (
    DEFAULT_SCALES,
    load_boxes_file,
    region_boxes,
    window_boxes,
)

if TYPE_CHECKING:
    from vlmsearch.rerank.view import CollectionView

MODES = ("auto", "teacher", "student")
# The teacher encodes each of 46 proposals twice (92 crops an image): on a CPU that is
# seconds per image (157 s for 10 hits measured on 2 cores with ViT-B-32), so it reranks
# fewer hits unless told otherwise; a distilled student needs one backbone pass an image.
TEACHER_CPU_TOP = 10
CACHE_IMAGES = 2048  # about 46 x 512 float32 each for a CLIP collection: ~190 MB at most


def _cache_key(
    path: str, model_state: tuple[Any, ...], scales: Sequence[float], boxes: Any
) -> tuple[Any, ...] | None:
    import os

    try:
        st = os.stat(path)
    except OSError:
        return None
    detector = tuple(tuple(b) for b in boxes) if boxes else None
    return (path, st.st_size, st.st_mtime_ns, model_state, tuple(scales), detector)


@register
class RegionReranker(Reranker):
    kind = "region"
    needs_text = False

    def __init__(
        self,
        mode: str = "auto",
        whole_weight: float = 0.0,
        boxes: str | dict[str, list[Box]] | None = None,
        scales: Sequence[float] = DEFAULT_SCALES,
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise QueryError(f"unknown region mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 <= whole_weight <= 1.0:
            raise QueryError(f"whole_weight must lie in [0, 1] (got {whole_weight})")
        self.mode = mode
        self.whole_weight = float(whole_weight)
        self.boxes = load_boxes_file(boxes) if isinstance(boxes, str) else boxes
        self.scales = tuple(scales)
        self.batch_size = batch_size
        self.device = device
        self.name = "region"
        # region embeddings do not depend on the query: a process that reranks again (a
        # server, a notebook, a benchmark) reuses them while the file is unchanged
        self._cache: OrderedDict[tuple[Any, ...], tuple[list[Box], np.ndarray]] = OrderedDict()
        self._crop_seconds: tuple[Any, float] | None = None

    def _teacher_on_cpu(self, collection: CollectionView) -> bool:
        from vlmsearch.rerank.region.student import has_student
        from vlmsearch.runtime import resolve_device

        teacher = self.mode == "teacher" or (self.mode == "auto" and not has_student(collection))
        return teacher and resolve_device(self.device) == "cpu"

    def default_top(self, collection: CollectionView) -> int:
        if self._teacher_on_cpu(collection):
            return TEACHER_CPU_TOP
        return super().default_top(collection)

    def plan_note(self, collection: CollectionView, n: int) -> str | None:
        if not self._teacher_on_cpu(collection):
            return None
        if self.boxes:  # the detector's boxes (a mean per image) plus the whole image
            per = 1 + sum(len(b) for b in self.boxes.values()) / max(1, len(self.boxes))
        else:
            per = len(self.boxes_per_image())
        crops = 2 * per
        enc = collection.encoder
        if self._crop_seconds is None or self._crop_seconds[0] is not enc:
            self._crop_seconds = (enc, crop_seconds(enc, self.batch_size))  # measured once
        seconds = n * crops * self._crop_seconds[1]
        return (
            f"region reranking with the teacher on CPU: about {seconds:.0f} s for {n} "
            "candidates; run `vlmsearch distill` for a fast student"
        )

    def boxes_per_image(self) -> list[Box]:
        """The sliding-window proposals (their number does not depend on the image size)."""
        return window_boxes(100, 100, self.scales)

    def _remember(self, key: tuple[Any, ...], value: tuple[list[Box], np.ndarray]) -> None:
        self._cache[key] = value
        while len(self._cache) > CACHE_IMAGES:
            self._cache.popitem(last=False)

    @classmethod
    def load(cls, arg: str | None, device: str | None = None, **options: Any) -> RegionReranker:
        return cls(mode=arg or "auto", device=device, **options)

    def _detector_boxes(
        self, cand: Candidate, collection: CollectionView | None
    ) -> list[Box] | None:
        if not self.boxes:
            return None
        rel = None
        if collection is not None:
            row = collection.rows([cand.id]).get(cand.id)
            rel = row["path"] if row else None
        return self.boxes.get(rel or "") or self.boxes.get(cand.path)

    def score(
        self,
        query: RerankQuery,
        candidates: Sequence[Candidate],
        progress: ProgressFn | None = None,
    ) -> RerankScores:
        from vlmsearch.imaging.decode import ImageDecodeError, load_image
        from vlmsearch.rerank.region.student import load_student

        coll = query.collection
        if coll is None or query.vector is None:
            raise QueryError("the region reranker needs a collection and a query vector")
        q = np.asarray(query.vector, np.float32).ravel()
        student = None
        if self.mode != "teacher":
            student = load_student(coll, device=self.device)
            if student is None and self.mode == "student":
                raise QueryError(
                    f"collection {coll.path} has no region student; train one with "
                    "`vlmsearch distill`, or use --rerank region:teacher"
                )
        by = f"region:{'student' if student is not None else 'teacher'}"
        # which model made the embeddings: the collection's encoder (its data generation
        # changes on a rebuild) or a particular trained student
        model_state = (
            str(coll.path),
            coll.manifest.get("data_generation"),
            (coll.manifest.get("region_student") or {}).get("file") if student else None,
        )
        scores = np.full(len(candidates), np.nan)
        best: list[Box | None] = [None] * len(candidates)
        errors: dict[int, str] = {}
        whole = np.zeros(len(candidates))
        if self.whole_weight > 0:
            ids = np.asarray([c.id for c in candidates], np.int64)
            whole = coll.vectors.dense(ids) @ q
        for i, cand in enumerate(candidates):
            detector = self._detector_boxes(cand, coll)
            key = _cache_key(cand.path, model_state, self.scales, detector)
            cached = self._cache.get(key) if key is not None else None
            if cached is None:
                try:
                    image = load_image(cand.path)
                except ImageDecodeError as e:
                    errors[i] = str(e)
                    if progress:
                        progress("rerank", 1, len(candidates))
                    continue
                boxes = region_boxes(image, self.scales, detector)
                if student is not None:
                    emb = student.embed(image, boxes)
                else:
                    emb = teacher_embeddings(coll.encoder, image, boxes, self.batch_size)
                if key is not None:
                    self._remember(key, (boxes, emb))
            else:
                boxes, emb = cached
            sims = emb @ q
            j = int(np.argmax(sims))
            scores[i] = (1 - self.whole_weight) * float(sims[j]) + self.whole_weight * whole[i]
            best[i] = boxes[j]
            if progress:
                progress("rerank", 1, len(candidates))
        return RerankScores(scores, best, errors, by)
