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
from vlmsearch.plugins import import_kinds
from vlmsearch.retrieval.rerankers.base import Candidate, Reranker, RerankScores, fuse

__all__ = ["Candidate", "Reranker", "RerankScores", "fuse", "register", "load_reranker"]

_REGISTRY: dict[str, type[Reranker]] = {}
_LOADED: dict[tuple[str, str | None, str], Reranker] = {}
_discovered = False


def register(cls: type[Reranker]) -> type[Reranker]:
    """Class decorator adding a reranker kind to the registry."""
    _REGISTRY[cls.kind] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import_kinds(__name__, __path__, "vlmsearch.rerankers", skip=("base", "proposals"))


def available() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def parse_spec(spec: str) -> tuple[str, str | None]:
    kind, sep, arg = spec.partition(":")
    return kind.strip(), (arg.strip() or None) if sep else None


def load_reranker(spec: str, device: str | None = None, **options: Any) -> Reranker:
    """The reranker for ``spec`` (loaded once per process and options)."""
    _discover()
    kind, arg = parse_spec(spec)
    if kind not in _REGISTRY:
        raise ModelError(f"unknown reranker {kind!r}; available: {', '.join(available())}")
    key = (spec, device, repr(sorted(options.items())))
    if key not in _LOADED:
        try:
            _LOADED[key] = _REGISTRY[kind].load(arg, device=device, **options)
        except TypeError as e:
            if "unexpected keyword" not in str(e):
                raise
            bad = str(e).rsplit(" ", 1)[-1].strip("'")
            raise QueryError(f"the {kind} reranker has no option {bad}") from None
    return _LOADED[key]
