"""What searches and classifications return: :class:`Hit` and :class:`Prediction`.

A bottom module (it imports nothing heavier than :mod:`vlmsearch.names`), so that every
layer -- search, rerank, the server, the CLI -- can build or read results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vlmsearch import names

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done_now, total)``: the work of a long call, as it goes."""


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
