"""The two towers of an open_clip model as separate encoders (kind ``open_clip``).

ASIF can then pair a CLIP image tower with another text model, or a CLIP text tower with
another image model. Names follow the dual encoder: ``open_clip:ARCH/TAG`` (e.g.
``open_clip:ViT-B-32/laion2b_s34b_b79k``), ``open_clip:ARCH:/path/to/checkpoint`` or
``open_clip:ARCH`` (random init, testing only); a bare ``open_clip`` means the default model.
When both towers of one model are used in a process, the model is loaded once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.models.encoders.openclip import (
    DEFAULT_MODEL,
    OpenClipEncoder,
    check_checkpoint,
    parse_model_name,
)
from vlmsearch.models.unimodal import register
from vlmsearch.models.unimodal.base import ImageEncoder, TextEncoder, UnimodalEncoder
from vlmsearch.runtime import autocast, resolve_device

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vlmsearch.models.onnx.text_tower import TowerExport

KIND = "open_clip"
IMAGE_BATCH = 64

# Loaded dual models, shared by the towers that hold them and freed with the last of those.
_loaded: weakref.WeakValueDictionary[tuple[Any, ...], OpenClipEncoder] = (
    weakref.WeakValueDictionary()
)


def _load_dual(arch: str, tag: str | None, ckpt: str | None, device: str) -> OpenClipEncoder:
    key: tuple[Any, ...] = (arch, tag, device)
    if ckpt is not None:
        path = Path(ckpt).expanduser().resolve()
        st = path.stat() if path.is_file() else None
        # A file replaced in place must not be served from the cache.
        key += (str(path), st and st.st_size, st and st.st_mtime_ns)
    dual = _loaded.get(key)
    if dual is None:
        dual = OpenClipEncoder._create(arch, tag, ckpt, device)
        _loaded[key] = dual
    return dual


class _OpenClipTower(UnimodalEncoder):
    kind = KIND

    def __init__(self, dual: OpenClipEncoder, spec: dict[str, Any]) -> None:
        self._dual = dual
        self._spec = spec
        self.device = dual.device

    @classmethod
    def from_name(cls, arg: str | None, device: str | None = None) -> _OpenClipTower:
        arch, tag, ckpt = parse_model_name(arg or DEFAULT_MODEL)
        return cls._build(arch, tag, ckpt, device)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> _OpenClipTower:
        enc = cls._build(spec["arch"], spec.get("pretrained"), spec.get("checkpoint"), device)
        check_checkpoint(spec, enc.spec)
        return enc

    @classmethod
    def _build(
        cls, arch: str, tag: str | None, ckpt: str | None, device: str | None
    ) -> _OpenClipTower:
        dual = _load_dual(arch, tag, ckpt, resolve_device(device))
        spec = dual.spec
        if spec.get("checkpoint"):
            name = f"{KIND}:{arch}:{spec['checkpoint']}"
        elif tag is not None:
            name = f"{KIND}:{arch}/{tag}"
        else:
            name = f"{KIND}:{arch}"
        spec["name"] = name
        return cls(dual, spec)


@register
class OpenClipImageTower(_OpenClipTower, ImageEncoder):
    """The visual tower: ``encode_image`` of the open_clip model."""

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self._dual.image_transform()

    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> np.ndarray:
        import torch

        model = self._dual.model
        out = []
        with torch.inference_mode(), autocast(self.device):
            for chunk in pixels.split(IMAGE_BATCH):
                x = chunk.to(self.device, non_blocking=True)
                out.append(model.encode_image(x, normalize=normalize).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


@register
class OpenClipTextTower(_OpenClipTower, TextEncoder):
    """The text tower: ``encode_text`` of the open_clip model, with its own tokenizer."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        # the dual encoder's own text path, with its exact speed-ups (padding cut, shared
        # prefix run once)
        return self._dual.encode_texts(texts)

    def onnx_text_export(self) -> TowerExport | None:
        return self._dual._text_tower()
