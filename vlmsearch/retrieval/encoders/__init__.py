"""Encoder registry.

Each encoder kind is one module in this package that decorates its class with
:func:`register`; third-party packages add kinds through the ``vlmsearch.encoders``
entry-point group. Modules are only imported when a kind is looked up.
"""

from __future__ import annotations

from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.plugins import import_kinds
from vlmsearch.retrieval.encoders.base import Encoder

__all__ = ["Encoder", "register", "available_kinds", "load_encoder", "encoder_from_spec"]

DEFAULT_KIND = "open_clip"
_REGISTRY: dict[str, type[Encoder]] = {}
_discovered = False


def register(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator adding an encoder kind to the registry."""
    _REGISTRY[cls.kind] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import_kinds(__name__, __path__, "vlmsearch.encoders")


def available_kinds() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def encoder_class(kind: str) -> type[Encoder]:
    _discover()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ModelError(
            f"unknown encoder kind {kind!r}; available: {', '.join(available_kinds())}"
        ) from None


def load_encoder(
    name: str, kind: str = DEFAULT_KIND, device: str | None = None, **options: Any
) -> Encoder:
    """Build an encoder from a user-facing model string."""
    return encoder_class(kind).from_name(name, device=device, **options)


def encoder_from_spec(spec: dict[str, Any], device: str | None = None) -> Encoder:
    """Rebuild the encoder a collection was made with, from its manifest spec."""
    return encoder_class(spec.get("kind", DEFAULT_KIND)).from_spec(spec, device=device)
