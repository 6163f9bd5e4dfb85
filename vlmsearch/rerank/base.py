"""The reranker interface, the candidates it scores, and score fusion."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from vlmsearch.rerank.view import CollectionView

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original image


@dataclass
class Candidate:
    """One first-stage hit: its id, image path and first-stage score."""

    id: int
    path: str
    score: float


@dataclass
class RerankScores:
    """A score per candidate (higher is better; NaN where the image could not be read),
    and for region rerankers the best box per candidate."""

    scores: np.ndarray
    boxes: list[Box | None] | None = None
    errors: dict[int, str] = field(default_factory=dict)  # candidate position -> message
    by: str | None = None  # who scored, when it depends on the call (region: student/teacher)


@dataclass
class RerankQuery:
    """What a reranker may use of the query: the text terms, and the query vector in the
    collection's space (image and negative terms included)."""

    text: str | None
    vector: np.ndarray | None = None
    collection: CollectionView | None = None  # what is searched (encoder, vectors, student)


ProgressFn = Callable[[str, int, int], None]
DEFAULT_TOP = 50


class Reranker(ABC):
    kind: ClassVar[str]
    needs_text: ClassVar[bool] = True
    """False for rerankers that only need the query vector (region)."""

    name: str = ""
    """How hits name the reranker that scored them."""

    @classmethod
    @abstractmethod
    def load(cls, arg: str | None, device: str | None = None, **options: Any) -> Reranker:
        """Build from the spec's argument (a model name or path) and options."""

    @abstractmethod
    def score(
        self,
        query: RerankQuery,
        candidates: Sequence[Candidate],
        progress: ProgressFn | None = None,
    ) -> RerankScores:
        """Score every candidate; the order of candidates must not matter."""

    def default_top(self, collection: CollectionView) -> int:
        """How many first-stage hits to rescore when the caller does not say."""
        return DEFAULT_TOP

    def plan_note(self, collection: CollectionView, n: int) -> str | None:
        """A line for the user before ``n`` candidates are scored (a slow path and how long
        it will take), or None."""
        return None


class BatchedImageReranker(Reranker):
    """A reranker that scores decoded candidate images in batches against the query text
    (the generative and matching heads). Subclasses implement :meth:`score_batch`."""

    batch_size: int = 16

    @abstractmethod
    def score_batch(self, text: str, images: list[Any]) -> np.ndarray:
        """One score per image (RGB PIL images) for the query ``text``."""

    def score(
        self,
        query: RerankQuery,
        candidates: Sequence[Candidate],
        progress: ProgressFn | None = None,
    ) -> RerankScores:
        from vlmsearch.imaging.decode import ImageDecodeError, load_image

        scores = np.full(len(candidates), np.nan)
        errors: dict[int, str] = {}
        for lo in range(0, len(candidates), self.batch_size):
            images, where = [], []
            for j, cand in enumerate(candidates[lo : lo + self.batch_size], start=lo):
                try:
                    images.append(load_image(cand.path))
                    where.append(j)
                except ImageDecodeError as e:  # reported on the hit, which sorts last
                    errors[j] = str(e)
            if images:
                scores[where] = self.score_batch(query.text or "", images)
            if progress:
                progress("rerank", min(self.batch_size, len(candidates) - lo), len(candidates))
        return RerankScores(scores, None, errors)


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale finite scores to [0, 1] over the candidates (constant scores give 1)."""
    x = np.asarray(x, np.float64)
    out = np.full_like(x, np.nan)
    ok = np.isfinite(x)
    if ok.any():
        lo, hi = x[ok].min(), x[ok].max()
        out[ok] = (x[ok] - lo) / (hi - lo) if hi > lo else 1.0
    return out


def fuse(first: np.ndarray, rerank: np.ndarray, weight: float | None) -> np.ndarray:
    """The final score of reranked candidates.

    ``weight`` None (the default): the reranker's own score. Otherwise
    ``weight * minmax(rerank) + (1 - weight) * minmax(first)``, each min-max scaled over
    the reranked candidates, because rerankers score on their own scales (log-probabilities,
    probabilities, cosines). Candidates the reranker could not score (NaN) sort last.
    """
    rerank = np.asarray(rerank, np.float64)
    if weight is None:
        out = rerank.copy()
    else:
        if not 0.0 <= weight <= 1.0:
            from vlmsearch.errors import QueryError

            raise QueryError(f"the fusion weight must lie in [0, 1] (got {weight})")
        out = weight * minmax(rerank) + (1.0 - weight) * minmax(first)
    out[~np.isfinite(rerank)] = -np.inf
    return out
