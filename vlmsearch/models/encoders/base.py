"""The encoder interface every registry entry implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vlmsearch.imaging.tensor_preprocess import TensorPreprocess
    from vlmsearch.models.onnx.image_tower import ImageTowerExport
    from vlmsearch.models.onnx.text_tower import TowerExport


class TextEmbedder(Protocol):
    """What a text-only query needs: an encoder, or a torch-free stand-in for its text side."""

    @property
    def dim(self) -> int: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class Encoder(ABC):
    """Maps images and texts into one L2-normalised embedding space.

    Subclasses register themselves with :func:`vlmsearch.models.encoders.register`
    and are recreated from the ``spec`` dict recorded in a collection's manifest.
    """

    kind: ClassVar[str]
    """Registry key, stored in the manifest as ``encoder.kind``."""
    sparse_output: ClassVar[bool] = False
    """True when vectors are mostly zeros (ASIF): stored as sparse shards and searched
    with posting lists instead of FAISS."""

    @classmethod
    @abstractmethod
    def from_name(cls, name: str, device: str | None = None, **options: Any) -> Encoder:
        """Build from a user-facing model string (e.g. ``ViT-B-32/laion2b_s34b_b79k``)."""

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> Encoder:
        """Rebuild from a manifest spec; must refuse weights that differ from the spec."""

    @classmethod
    def check_spec(cls, spec: dict[str, Any]) -> None:
        """Cheap checks that the files a manifest spec names are still the same (without
        building the model; :meth:`from_spec` makes them too). Raises ModelError."""
        return None

    @property
    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-able description recorded in the manifest (includes ``kind`` and ``dim``)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension."""

    @property
    def display_name(self) -> str:
        return str(self.spec.get("name", self.kind))

    @abstractmethod
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A picklable PIL -> tensor transform, run in the decoding workers."""

    def tensor_preprocess(self) -> TensorPreprocess | None:
        """The image transform as resize/crop/normalise parameters, when it is one; lets
        indexing decode on the GPU and size JPEG draft decoding. None: unknown."""
        return None

    @abstractmethod
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a batch of transformed images; returns float32 (n, dim), L2-normalised."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns float32 (n, dim), L2-normalised."""

    # -- what a region student learns (vlmsearch.rerank.region.student) ------------------
    student_space: ClassVar[str] = "embedding"
    """``embedding``: a student predicts the L2-normalised embedding itself. ``features``:
    it predicts dense features that :meth:`from_student_features` maps into the space
    (ASIF, whose sparse relative representations an L1 student cannot learn directly)."""

    @property
    def student_features_normalized(self) -> bool:
        """Whether student features are L2-normalised (a student's output is too)."""
        return True

    def student_features(self, pixels: torch.Tensor) -> np.ndarray:
        """A region student's target for a batch of transformed crops."""
        return self.encode_pixels(pixels)

    def from_student_features(self, features: np.ndarray) -> np.ndarray:
        """Map :meth:`student_features` (or a student's predictions) into the embedding
        space; ``encode_pixels(x) == from_student_features(student_features(x))``."""
        return np.asarray(features, np.float32)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed already-decoded RGB images (convenience for queries)."""
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        from vlmsearch.imaging.bounded_resize import bounded

        transform = bounded(self.image_transform())  # a 1 x 200000 strip stays small
        return self.encode_pixels(torch.stack([transform(im) for im in images]))

    # -- torch-free text queries (vlmsearch.models.onnx.text_tower) ------------------------------
    def onnx_text_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], TowerExport | None]] | None:
        """(the spec keying the export, a function building it) for the model that embeds
        text; None when this encoder has no exportable text tower."""
        return None

    @classmethod
    def text_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The spec :meth:`onnx_text_export` would key its export by, read from a manifest
        spec without building the encoder; None: this kind exports no text tower."""
        return None

    @classmethod
    def text_query_encoder(cls, spec: dict[str, Any]) -> TextEmbedder | None:
        """A torch-free encoder of text queries for a collection with this spec, when its
        text tower was exported; None otherwise (the caller loads the full encoder)."""
        return None

    # -- torch-free image queries (vlmsearch.models.onnx.image_tower) ---------------------------
    def onnx_image_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], ImageTowerExport | None]] | None:
        """(the spec keying the export, a function building it) for the image side; None
        when this encoder has no exportable image tower."""
        return None

    @classmethod
    def image_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The spec :meth:`onnx_image_export` keys its export by, from a manifest spec
        without building the encoder; None: this kind exports no image tower."""
        return None

    @classmethod
    def image_query_encoder(
        cls, spec: dict[str, Any], texts: TextEmbedder | None, **engine: str
    ) -> Any:
        """A torch-free query encoder (``dim``, ``encode_images`` and, through ``texts``,
        ``encode_texts``) when the image tower was exported; None otherwise. ``engine``:
        ``engine=`` and ``precision=`` for the export's runner (index runs choose them;
        queries take the defaults, onnxruntime fp32)."""
        return None

    @staticmethod
    def identity(spec: dict[str, Any]) -> dict[str, Any]:
        """The part of a spec that must match for embeddings to be comparable."""
        return {k: v for k, v in spec.items() if k in ("kind", "arch", "pretrained", "sha256")}
