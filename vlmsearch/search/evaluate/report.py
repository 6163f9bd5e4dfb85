"""What an evaluation returns: its figures, notes for the reader, and its worst misses
(shown as thumbnails by ``--html``), plus the rank arithmetic the evaluations share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

RECALL_AT = (1, 5, 10)
WORST = 24  # misses kept per section for the report


@dataclass
class Miss:
    """One query that went wrong: the image it is about and what happened to it."""

    id: int
    path: str  # absolute, for thumbnails
    text: str  # the caption, or "true label -> predicted"
    rank: int  # where the right answer ranked (1 = found first)
    got: str = ""  # what came first instead

    def to_dict(self) -> dict[str, Any]:
        return dict(id=self.id, path=self.path, text=self.text, rank=self.rank, got=self.got)


@dataclass
class EvalReport:
    """An evaluation's outcome; ``metrics`` are flat or one level of sections."""

    kind: str
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    misses: dict[str, list[Miss]] = field(default_factory=dict)  # section -> worst first

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.metrics,
            "notes": list(self.notes),
            "worst": {k: [m.to_dict() for m in v] for k, v in self.misses.items()},
        }


def rank_summary(ranks: np.ndarray) -> dict[str, Any]:
    """R@1/5/10 (share of queries whose answer ranked within k) and the median rank."""
    ranks = np.asarray(ranks, np.int64)
    out: dict[str, Any] = {"queries": len(ranks)}
    for k in RECALL_AT:
        out[f"R@{k}"] = float(np.mean(ranks <= k)) if len(ranks) else 0.0
    out["median_rank"] = float(np.median(ranks)) if len(ranks) else 0.0
    return out


def ranks_of(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
    """1 + how many candidates score strictly above the right answer's score, per row of
    ``scores`` (queries x candidates); ``right``: each row's best right score."""
    return 1 + (np.asarray(scores) > np.asarray(right)[:, None]).sum(axis=1)


def worst(misses: list[Miss], n: int = WORST) -> list[Miss]:
    """The ``n`` worst-ranked misses (rank > 1), worst first; ties by id."""
    wrong = [m for m in misses if m.rank > 1]
    return sorted(wrong, key=lambda m: (-m.rank, m.id))[:n]
