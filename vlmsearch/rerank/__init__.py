"""Reranker registry.

A reranker looks closer at the first stage's top candidates and gives each a new score.
Each kind is one module in this package that decorates its class with :func:`register`;
third-party packages add kinds through the ``vlmsearch.rerankers`` entry-point group.
A spec names a kind and an optional argument, ``KIND[:ARG]``: ``region``,
``coca:coca_ViT-B-32/laion2b_s13b_b90k``, ``vqa:/models/smolvlm``, ``itm:/models/vilt``.
Loaded rerankers are kept for the life of the process, so a model loads once.
"""

from __future__ import annotations

from typing import Any

from vlmsearch.errors import ModelError, QueryError
from vlmsearch.plugins import Registry, parse_spec
from vlmsearch.rerank.base import Candidate, Reranker, RerankScores, fuse

__all__ = [
    "Candidate",
    "Reranker",
    "RerankScores",
    "fuse",
    "register",
    "check_reranker",
    "load_reranker",
]

_kinds: Registry[Reranker] = Registry(
    __name__,
    __path__,
    "vlmsearch.rerankers",
    skip=("base", "region"),
    builtins=("vlmsearch.rerank.region.teacher",),
)
register = _kinds.register
"""Class decorator adding a reranker kind to the registry."""
_LOADED: dict[tuple[str, str | None, str], Reranker] = {}


def available() -> list[str]:
    return sorted(str(k) for k in _kinds.kinds())


def check_reranker(spec: str) -> None:
    """Refuse a spec whose kind is not registered, before anything is loaded."""
    kind, _ = parse_spec(spec)
    if kind not in available():
        raise ModelError(f"unknown reranker {kind!r}; available: {', '.join(available())}")


def load_reranker(spec: str, device: str | None = None, **options: Any) -> Reranker:
    """The reranker for ``spec`` (loaded once per process and options)."""
    kind, arg = parse_spec(spec)
    cls = _kinds.get(kind)
    if cls is None:
        raise ModelError(f"unknown reranker {kind!r}; available: {', '.join(available())}")
    key = (spec, device, repr(sorted(options.items())))
    if key not in _LOADED:
        try:
            _LOADED[key] = cls.load(arg, device=device, **options)
        except TypeError as e:
            if "unexpected keyword" not in str(e):
                raise
            bad = str(e).rsplit(" ", 1)[-1].strip("'")
            raise QueryError(f"the {kind} reranker has no option {bad}") from None
    return _LOADED[key]
