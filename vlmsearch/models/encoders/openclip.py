"""Contrastive dual encoder over open_clip (kind ``open_clip``).

Model strings:
- ``ARCH/PRETRAINED``: an open_clip architecture and pretrained tag, e.g.
  ``ViT-B-32/laion2b_s34b_b79k`` (fetched once into the Hugging Face cache);
- ``ARCH:/path/to/checkpoint.pt``: local weights, identified by their sha256;
- ``ARCH``: random initialisation, for tests and speed measurements only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.models.encoders import openclip_text, register
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.hub import hf_offline, hub_reachable, quiet_root_logger
from vlmsearch.runtime import autocast, check_same_weights, file_sha256, resolve_device

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vlmsearch.imaging.tensor_preprocess import TensorPreprocess
    from vlmsearch.models.encoders.base import TextEmbedder
    from vlmsearch.models.onnx.image_tower import ImageTowerExport
    from vlmsearch.models.onnx.text_tower import TowerExport

DEFAULT_MODEL = "ViT-B-32/laion2b_s34b_b79k"
TEXT_BATCH = 256


def parse_model_name(name: str) -> tuple[str, str | None, str | None]:
    """Split a model string into (arch, pretrained tag, checkpoint path)."""
    name = name.strip()
    if ":" in name and not name.startswith(("hf-hub:", "local-dir:")):
        arch, ckpt = name.split(":", 1)
        return arch, None, ckpt
    if "/" in name and not name.startswith(("hf-hub:", "local-dir:")):
        arch, tag = name.split("/", 1)
        return arch, tag, None
    return name, None, None


_registered_config_dirs: set[str] = set()


def register_user_configs() -> None:
    """Register extra open_clip model configs (JSON files) from $VLMSEARCH_MODEL_CONFIGS,
    an os.pathsep-separated list of files or directories."""
    import open_clip

    for entry in filter(None, os.environ.get("VLMSEARCH_MODEL_CONFIGS", "").split(os.pathsep)):
        if entry not in _registered_config_dirs and Path(entry).exists():
            open_clip.add_model_config(entry)
            _registered_config_dirs.add(entry)


def _offline_paragraph(arch: str, tag: str, cause: str) -> str:
    return (
        f"Cannot load the weights for open_clip model '{arch}/{tag}' ({cause}). "
        "vlmsearch downloads pretrained tags from the Hugging Face hub on first use; "
        "that failed and the weights are not in the local cache. "
        f"Copy a checkpoint here and name it as '{arch}:/path/to/open_clip_pytorch_model.bin' "
        "(any file open_clip can load: .pt, .bin or .safetensors), or run once with network "
        "access so the weights are cached."
    )


@register
class OpenClipEncoder(Encoder):
    kind = "open_clip"

    def __init__(
        self,
        model: Any,
        preprocess: Callable[..., Any],
        tokenizer: Callable[..., Any],
        spec: dict[str, Any],
        device: str,
        precision: str = "auto",
    ) -> None:
        self.model = model
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._spec = spec
        self.device = device
        self.precision = precision

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_name(
        cls, name: str, device: str | None = None, precision: str = "auto", **_: Any
    ) -> OpenClipEncoder:
        arch, tag, ckpt = parse_model_name(name)
        return cls._create(arch, tag, ckpt, device, precision)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> OpenClipEncoder:
        enc = cls._create(spec["arch"], spec.get("pretrained"), spec.get("checkpoint"), device)
        check_checkpoint(spec, enc.spec)
        return enc

    @classmethod
    def check_spec(cls, spec: dict[str, Any]) -> None:
        ckpt = spec.get("checkpoint")
        if ckpt:
            path = Path(ckpt)
            if not path.is_file():
                raise ModelError(f"checkpoint not found: {path}")
            check_checkpoint(spec, {"sha256": file_sha256(path)})  # hash cached by mtime

    @classmethod
    def _create(
        cls,
        arch: str,
        tag: str | None,
        ckpt: str | None,
        device: str | None,
        precision: str = "auto",
    ) -> OpenClipEncoder:
        import open_clip
        import torch

        register_user_configs()
        if arch not in open_clip.list_models() and not arch.startswith(("hf-hub:", "local-dir:")):
            raise ModelError(
                f"unknown open_clip architecture {arch!r} "
                "(see `python -c 'import open_clip; print(open_clip.list_models())'`)"
            )
        device = resolve_device(device)
        spec: dict[str, Any] = {"kind": cls.kind, "arch": arch}
        kwargs: dict[str, Any] = {"device": device}
        if tag == "openai" and not arch.endswith("quickgelu"):
            # OpenAI weights were trained with QuickGELU; open_clip only warns otherwise.
            kwargs["force_quick_gelu"] = True
        if ckpt is not None:
            path = Path(ckpt).expanduser()
            if not path.is_file():
                raise ModelError(f"checkpoint not found: {path}")
            path = path.resolve()
            spec.update(checkpoint=str(path), sha256=file_sha256(path), name=f"{arch}:{path}")
            kwargs["pretrained"] = str(path)
        elif tag is not None:
            spec.update(pretrained=tag, name=f"{arch}/{tag}")
            kwargs["pretrained"] = tag
        else:
            spec.update(pretrained=None, name=f"{arch} (random init, testing only)")
        offline = tag is not None and not hub_reachable()
        try:
            # Without the offline switch huggingface_hub retries for about a minute;
            # open_clip also logs its own errors on the root logger, which we report instead.
            with (
                quiet_root_logger(),
                hf_offline() if offline else contextlib.nullcontext(),
                torch.random.fork_rng(devices=[]),
            ):
                # Random-init models must be identical in every process (a collection is
                # reopened by later commands), so their initialisation is seeded.
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(arch, **kwargs)
        except RuntimeError as e:
            if tag is not None:
                cause = "not in the local cache" if offline else str(e).split(". ")[0]
                raise ModelError(_offline_paragraph(arch, tag, cause)) from None
            raise ModelError(f"cannot load open_clip model {spec['name']}: {e}") from None
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot load open_clip model {spec['name']}: {e}") from None
        model.eval()
        spec["dim"] = _embed_dim(model, torch)
        pcfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
        spec["preprocess"] = {k: _jsonable(v) for k, v in dict(pcfg).items()}
        spec["context_length"] = int(getattr(model, "context_length", 77) or 77)
        tokenizer = open_clip.get_tokenizer(arch, context_length=spec["context_length"])
        return cls(model, preprocess, tokenizer, spec, device, precision)

    # -- interface ----------------------------------------------------------------------------
    @property
    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    @property
    def dim(self) -> int:
        return int(self._spec["dim"])

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self._preprocess

    def tensor_preprocess(self) -> TensorPreprocess | None:
        from vlmsearch.imaging.tensor_preprocess import TensorPreprocess

        return TensorPreprocess.from_open_clip(self._spec.get("preprocess") or {})

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(self.device, self.precision):
            x = pixels.to(self.device, non_blocking=True)
            feats = self.model.encode_image(x, normalize=True)
        return feats.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), TEXT_BATCH):
            tokens = self._tokenizer(list(texts[i : i + TEXT_BATCH])).to(self.device)
            with torch.inference_mode(), autocast(self.device, self.precision):
                feats = openclip_text.encode_text(self.model, tokens)
                out.append(feats.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    # -- torch-free text queries ----------------------------------------------------------------
    def onnx_text_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], TowerExport | None]] | None:
        return self.spec, self._text_tower

    @classmethod
    def text_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        return spec

    @classmethod
    def text_query_encoder(cls, spec: dict[str, Any]) -> TextEmbedder | None:
        from vlmsearch.models.onnx.text_tower import open_tower

        return open_tower(spec)

    # -- torch-free image queries ---------------------------------------------------------------
    @classmethod
    def image_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        from vlmsearch.imaging.tensor_preprocess import TensorPreprocess

        return spec if TensorPreprocess.from_open_clip(spec.get("preprocess") or {}) else None

    def onnx_image_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], ImageTowerExport | None]] | None:
        return self.spec, self._image_tower

    @classmethod
    def image_query_encoder(
        cls, spec: dict[str, Any], texts: TextEmbedder | None, **engine: str
    ) -> Any:
        from vlmsearch.models.onnx import image_tower

        tower = image_tower.open_tower(spec, **engine)
        return image_tower.OnnxImageQueries(tower, texts, int(spec["dim"])) if tower else None

    def _image_tower(self) -> ImageTowerExport | None:
        """``encode_image(normalize=True)`` over pixels preprocessed as open_clip's
        shortest-side transform does (others keep the torch path)."""
        import torch

        from vlmsearch.models.onnx.image_tower import ImageTowerExport, Preprocess

        pp = self.tensor_preprocess()
        if pp is None or not hasattr(self.model, "encode_image"):
            return None
        model, device, transform = self.model, self.device, self._preprocess

        class Tower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:
                return self.model.encode_image(pixels, normalize=True).float()

        def reference(images: list[Any]) -> np.ndarray:
            if device == "cpu":  # exactly the path torch queries take
                return self.encode_images(images)
            with torch.inference_mode():  # fp32: the export runs without autocast
                px = torch.stack([transform(im) for im in images]).to(device)
                return model.encode_image(px, normalize=True).float().cpu().numpy()

        return ImageTowerExport(
            module=Tower().eval(),
            example=torch.zeros(2, 3, pp.size, pp.size, device=device),
            preprocess=Preprocess(pp.size, pp.size, pp.mean, pp.std, pp.interpolation),
            reference=reference,
            meta={"normalized": True, "dim": self.dim},
        )

    def _text_tower(self) -> TowerExport | None:
        """``encode_text`` as a graph over (n, context) token ids, with open_clip's BPE
        rebuilt as a ``tokenizers`` model. Only the SimpleTokenizer with its default
        ``lower`` cleaning is converted; other tokenizers keep the torch path."""
        import torch
        from open_clip.tokenizer import SimpleTokenizer, get_clean_fn

        tok = self._tokenizer
        if (
            not isinstance(tok, SimpleTokenizer)
            or tok.clean_fn is not get_clean_fn("lower")
            or getattr(tok, "reduction_fn", None) is not None
            or not hasattr(self.model, "encode_text")
        ):
            return None
        from vlmsearch.models.onnx.text_tower import TowerExport

        model, device = self.model, self.device

        class Tower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                return self.model.encode_text(tokens, normalize=True).float()

        def reference(texts: list[str]) -> np.ndarray:
            if device == "cpu":  # the torch path queries take, trimming included
                return self.encode_texts(texts)
            with torch.inference_mode():  # fp32: the export runs without autocast
                tokens = tok(texts).to(device)
                return model.encode_text(tokens, normalize=True).float().cpu().numpy()

        ctx = int(self._spec["context_length"])
        return TowerExport(
            module=Tower().eval(),
            example=(tok(["a photo", "x"], context_length=ctx).to(device),),
            input_names=["tokens"],
            tokenizer=openclip_text.bpe_tokenizer(tok),
            meta={
                "style": "clip",
                "context_length": ctx,
                "sot": int(tok.sot_token_id),
                "eot": int(tok.eot_token_id),
            },
            reference=reference,
            reference_ids=lambda texts: tok(texts, context_length=ctx).tolist(),
            dynamic_axes={"tokens": {0: "n"}, "embedding": {0: "n"}},
        )


def check_checkpoint(recorded: dict[str, Any], loaded: dict[str, Any]) -> None:
    """Refuse a local checkpoint whose bytes changed since ``recorded`` was written."""
    check_same_weights(
        recorded,
        loaded,
        f"checkpoint {recorded.get('checkpoint')} has changed since the collection was built",
    )


def _embed_dim(model: Any, torch: Any) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    return int(getattr(getattr(model, "visual", None), "output_dim", 0))


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)
