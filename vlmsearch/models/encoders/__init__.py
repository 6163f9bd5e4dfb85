"""Encoder registry.

Each encoder kind is one module in this package that decorates its class with
:func:`register`; third-party packages add kinds through the ``vlmsearch.encoders``
entry-point group (see :class:`vlmsearch.plugins.Registry`).
"""

from __future__ import annotations

from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.plugins import Registry

__all__ = ["Encoder", "register", "available_kinds", "load_encoder", "encoder_from_spec"]

DEFAULT_KIND = "open_clip"
# openclip_text holds open_clip's text fast paths: a helper module, not an encoder kind
_kinds: Registry[Encoder] = Registry(
    __name__,
    __path__,
    "vlmsearch.encoders",
    skip=("base", "openclip_text"),
    builtins=("vlmsearch.models.asif.encoder",),
)
register = _kinds.register
"""Class decorator adding an encoder kind to the registry."""


def available_kinds() -> list[str]:
    return sorted(str(k) for k in _kinds.kinds())


def encoder_class(kind: str) -> type[Encoder]:
    cls = _kinds.get(kind)
    if cls is None:
        raise ModelError(
            f"unknown encoder kind {kind!r}; available: {', '.join(available_kinds())}"
        )
    return cls


def load_encoder(
    name: str, kind: str = DEFAULT_KIND, device: str | None = None, **options: Any
) -> Encoder:
    """Build an encoder from a user-facing model string."""
    return encoder_class(kind).from_name(name, device=device, **options)


def encoder_from_spec(spec: dict[str, Any], device: str | None = None) -> Encoder:
    """Rebuild the encoder a collection was made with, from its manifest spec."""
    return encoder_class(spec.get("kind", DEFAULT_KIND)).from_spec(spec, device=device)
