"""Single-modality encoders: an image encoder or a text encoder on its own.

ASIF (``vlmsearch.models.asif.relative``) pairs one of each through anchor sets, so the two
need not share an embedding space or a dimension.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vlmsearch.models.onnx.image_tower import ImageTowerExport
    from vlmsearch.models.onnx.text_tower import TowerExport


@dataclass
class Classifier:
    """A linear classification head over an image encoder's raw (unnormalised) features:
    ``logits = features @ weight.T + bias``. Prototype anchor sets are built from it."""

    weight: np.ndarray  # (classes, dim) float32
    bias: np.ndarray  # (classes,) float32
    class_names: list[str]


class UnimodalEncoder(ABC):
    kind: ClassVar[str]
    """Registry key; users name an encoder as ``KIND`` or ``KIND:ARGUMENT``."""
    modality: ClassVar[str]
    """``"image"`` or ``"text"``."""

    @classmethod
    @abstractmethod
    def from_name(cls, arg: str | None, device: str | None = None) -> UnimodalEncoder:
        """Build from the part of the user's string after ``KIND:`` (None if absent)."""

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> UnimodalEncoder:
        """Rebuild from a recorded spec; must refuse weights that differ (sha256)."""

    def __init__(self, model: Any, spec: dict[str, Any], device: str) -> None:
        self.model = model
        self._spec = spec
        self.device = device

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able; includes ``kind``, ``name`` (the user string), ``dim`` and, where the
        weights are a local file, its ``sha256``."""
        return dict(self._spec)

    @property
    def dim(self) -> int:
        return int(self.spec["dim"])

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @staticmethod
    def identity(spec: dict[str, Any]) -> dict[str, Any]:
        """The part of a spec that must match for embeddings to be comparable."""
        return {k: spec.get(k) for k in ("kind", "name", "sha256")}


class ImageEncoder(UnimodalEncoder):
    modality = "image"

    @abstractmethod
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A picklable PIL -> tensor transform, run in the decoding workers."""

    @abstractmethod
    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> np.ndarray:
        """Features of a batch of transformed images, float32 (n, dim); L2-normalised
        unless ``normalize`` is False (raw features feed :meth:`classifier`)."""

    def classifier(self) -> Classifier | None:
        """The encoder's own classification head, if it has one."""
        return None

    # -- torch-free image queries (vlmsearch.models.onnx.image_tower) ---------------------------
    exports_image_tower: ClassVar[bool] = False
    """True when :meth:`onnx_image_export` can export this kind (read without building)."""

    def onnx_image_export(self) -> ImageTowerExport | None:
        """This model's raw features (``normalize=False``) as an exportable tower."""
        return None

    def encode_images(self, images: Sequence[Image.Image], normalize: bool = True) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        from vlmsearch.imaging.bounded_resize import bounded

        t = bounded(self.image_transform())  # a 1 x 200000 strip stays small
        return self.encode_pixels(torch.stack([t(im) for im in images]), normalize=normalize)


class TextEncoder(UnimodalEncoder):
    modality = "text"

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of texts, float32 (n, dim), L2-normalised."""

    def onnx_text_export(self) -> TowerExport | None:
        """This model as an ONNX-exportable tower (vlmsearch.models.onnx.text_tower); None
        when it cannot be exported."""
        return None
