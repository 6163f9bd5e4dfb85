"""The rerank stage of a search: choosing the reranker and its depth, then rescoring the
first stage's top hits and fusing the scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.rerank.base import Candidate, Reranker, RerankQuery, fuse
from vlmsearch.rerank.view import CollectionView
from vlmsearch.results import Hit, ProgressFn


def load_for_search(
    rerank: str | Reranker | None,
    top: int | None,
    view: CollectionView,
    device: str | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Reranker | None, int | None]:
    """The reranker a search asked for (a spec is checked, then loaded once per process)
    and how many hits it rescores: ``top``, else the reranker's default for ``view``."""
    if rerank is None:
        return None, top
    if top is not None and top < 1:
        raise QueryError(f"--rerank-top must be at least 1 (got {top})")
    if isinstance(rerank, str):
        from vlmsearch.rerank import check_reranker, load_reranker

        check_reranker(rerank)
        rerank = load_reranker(rerank, device=device, **(options or {}))
    return rerank, top if top is not None else rerank.default_top(view)


def rerank_hits(
    view: CollectionView,
    hits: list[Hit],
    reranker: Any,
    query: RerankQuery,
    top: int = 50,
    fusion: float | None = None,
    progress: ProgressFn | None = None,
    notify: Callable[[str], None] | None = None,
) -> list[Hit]:
    """Rescore the first ``top`` hits with ``reranker`` and sort them by the result.

    The final score is the reranker's own (``fusion`` None), or ``fusion * minmax(rerank)
    + (1 - fusion) * minmax(first stage)`` over the reranked hits. ``hit.scores`` keeps
    both parts. Hits below ``top`` follow, in first-stage order, unchanged. The
    reranker's plan (a slow path and how long it takes) goes to ``notify``."""
    if top < 1:
        raise QueryError(f"--rerank-top must be at least 1 (got {top})")
    if reranker.needs_text and not query.text:
        raise QueryError(f"the {reranker.kind} reranker needs a text query")
    head, tail = hits[:top], hits[top:]
    if not head:
        return hits
    note = reranker.plan_note(view, len(head)) if hasattr(reranker, "plan_note") else None
    if note and notify is not None:
        notify(note)
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
