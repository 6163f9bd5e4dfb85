"""Registry of single-modality encoders (image or text), used by ASIF.

Each kind is one module in this package that decorates its class with :func:`register`;
other packages add kinds through the ``vlmsearch.unimodal`` entry-point group. Users
name an encoder ``KIND`` or ``KIND:ARGUMENT``, e.g. ``efficientnet-lite0``,
``timm:resnet50.a1_in1k``, ``minilm``, ``sentence-transformers:/path/to/model``,
``open_clip:ViT-B-32/laion2b_s34b_b79k``.
"""

from __future__ import annotations

from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.models.unimodal.base import (
    Classifier,
    ImageEncoder,
    TextEncoder,
    UnimodalEncoder,
)
from vlmsearch.plugins import Registry, parse_spec

__all__ = [
    "Classifier",
    "ImageEncoder",
    "TextEncoder",
    "UnimodalEncoder",
    "register",
    "available",
    "load_image_encoder",
    "load_text_encoder",
    "unimodal_from_spec",
]

_kinds: Registry[UnimodalEncoder] = Registry(
    __name__, __path__, "vlmsearch.unimodal", key=lambda cls: (cls.modality, cls.kind)
)
register = _kinds.register
"""Class decorator adding an image or text encoder kind to the registry."""


def available(modality: str) -> list[str]:
    return sorted(k for m, k in _kinds.kinds() if m == modality)  # type: ignore[misc]


def _lookup(modality: str, kind: str) -> type[UnimodalEncoder]:
    cls = _kinds.get((modality, kind))
    if cls is None:
        raise ModelError(
            f"unknown {modality} encoder {kind!r}; available: {', '.join(available(modality))}"
        )
    return cls


def unimodal_class(modality: str, kind: str) -> type[UnimodalEncoder]:
    """The class registered for ``kind`` (ModelError when there is none)."""
    return _lookup(modality, kind)


def _load(modality: str, name: str, device: str | None) -> UnimodalEncoder:
    kind, arg = parse_spec(name)
    return _lookup(modality, kind).from_name(arg, device=device)


def load_image_encoder(name: str, device: str | None = None) -> ImageEncoder:
    enc = _load("image", name, device)
    assert isinstance(enc, ImageEncoder)
    return enc


def load_text_encoder(name: str, device: str | None = None) -> TextEncoder:
    enc = _load("text", name, device)
    assert isinstance(enc, TextEncoder)
    return enc


def unimodal_from_spec(
    modality: str, spec: dict[str, Any], device: str | None = None
) -> UnimodalEncoder:
    return _lookup(modality, spec["kind"]).from_spec(spec, device=device)
