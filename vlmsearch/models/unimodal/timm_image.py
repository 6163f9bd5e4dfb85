"""Image encoder over any timm model (kind ``timm``): its penultimate (pre-logits) features.

Names: ``timm:MODEL`` (pretrained weights from the Hugging Face cache, e.g.
``timm:resnet50.a1_in1k``) or ``timm:MODEL:/path/to/weights.(pth|safetensors)`` (a local
state dict for that architecture, identified by its sha256).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.models.hub import hf_offline, hub_reachable
from vlmsearch.models.unimodal import register
from vlmsearch.models.unimodal.base import Classifier, ImageEncoder
from vlmsearch.models.unimodal.efficientnet_lite import to_rgb
from vlmsearch.runtime import autocast, check_same_weights, file_sha256, resolve_device

if TYPE_CHECKING:
    import torch
    from PIL import Image

KIND = "timm"
BATCH = 64
_HUB_PREFIXES = ("hf-hub:", "local-dir:")


def split_timm_arg(arg: str) -> tuple[str, str | None]:
    """``MODEL`` or ``MODEL:/path`` -> (model, path or None); keeps ``hf-hub:`` prefixes."""
    prefix = ""
    if arg.startswith(_HUB_PREFIXES):
        prefix, _, arg = arg.partition(":")
        prefix += ":"
    model, sep, path = arg.partition(":")
    return prefix + model, (path if sep else None)


def _offline_paragraph(model: str, cause: str) -> str:
    return (
        f"Cannot load the pretrained weights for timm model '{model}' ({cause}). "
        "timm downloads them from the Hugging Face hub on first use, which needs network "
        "access. Copy a weights file (.pth or .safetensors, e.g. the model.safetensors of "
        "the model's hub repository) to this machine and name the encoder as "
        f"'timm:{model}:/path/to/model.safetensors', or run once with network access so the "
        "weights are cached."
    )


@register
class TimmImageEncoder(ImageEncoder):
    kind = KIND

    @classmethod
    def from_name(cls, arg: str | None, device: str | None = None) -> TimmImageEncoder:
        if not arg:
            raise ModelError(
                "name a timm model as timm:MODEL (e.g. timm:resnet50.a1_in1k) "
                "or timm:MODEL:/path/to/weights.safetensors"
            )
        model_name, path = split_timm_arg(arg)
        try:
            import timm  # noqa: F401
        except ImportError:
            raise ModelError("timm encoders need the timm package: pip install timm") from None
        device = resolve_device(device)
        if path is not None:
            return cls._from_file(model_name, Path(path).expanduser(), device)
        return cls._from_hub(model_name, device)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> TimmImageEncoder:
        ckpt = spec.get("checkpoint")
        enc = cls.from_name(f"{spec['model']}:{ckpt}" if ckpt else spec["model"], device)
        check_same_weights(
            spec, enc.spec, f"weights file {ckpt} has changed since the collection was built"
        )
        return enc

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def _check_model(cls, model_name: str) -> None:
        import timm

        if not model_name.startswith(_HUB_PREFIXES) and not timm.is_model(model_name):
            raise ModelError(
                f"unknown timm model {model_name!r} "
                "(see `python -c 'import timm; print(timm.list_models())'`)"
            )

    @classmethod
    def _from_hub(cls, model_name: str, device: str) -> TimmImageEncoder:
        import timm
        from timm.models import get_pretrained_cfg

        cls._check_model(model_name)
        if not model_name.startswith(_HUB_PREFIXES):
            try:
                cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
            except RuntimeError as e:  # an invalid pretrained tag
                raise ModelError(f"unknown timm model {model_name!r}: {e}") from None
            if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
                raise ModelError(
                    f"timm model {model_name!r} has no pretrained weights; pick a tagged "
                    f"name (timm.list_pretrained('{model_name.split('.')[0]}*')) or name a "
                    f"local file as timm:{model_name}:/path/to/weights.safetensors"
                )
        # Without the offline switch huggingface_hub retries for most of a minute.
        offline = not hub_reachable()
        try:
            with hf_offline() if offline else contextlib.nullcontext():
                model = timm.create_model(model_name, pretrained=True)
        except Exception as e:  # timm, huggingface_hub and torch.hub raise many kinds
            cause = "not in the local cache" if offline else _first_line(e)
            raise ModelError(_offline_paragraph(model_name, cause)) from None
        pcfg = dict(model.pretrained_cfg or {})
        canonical = model_name
        if not model_name.startswith(_HUB_PREFIXES) and pcfg.get("tag"):
            canonical = f"{pcfg.get('architecture') or model_name.split('.')[0]}.{pcfg['tag']}"
        spec = {"kind": KIND, "name": f"{KIND}:{canonical}", "model": canonical}
        return cls._finish(model, spec, device)

    @classmethod
    def _from_file(cls, model_name: str, path: Path, device: str) -> TimmImageEncoder:
        import timm
        from timm.models import load_state_dict

        cls._check_model(model_name)
        if not path.is_file():
            raise ModelError(f"timm weights file not found: {path}")
        path = path.resolve()
        try:
            state = load_state_dict(str(path), use_ema=True, weights_only=True)
        except Exception as e:  # torch.load / safetensors raise many kinds on a bad file
            raise ModelError(f"cannot read timm weights {path}: {_first_line(e)}") from None
        try:
            model = timm.create_model(model_name, pretrained=False)
        except Exception as e:
            raise ModelError(f"cannot create timm model {model_name!r}: {_first_line(e)}") from None
        # The checkpoint decides the head: a fine-tuned or headless file keeps its own size.
        head = (model.pretrained_cfg or {}).get("classifier") or ""
        if isinstance(head, tuple | list):
            head = head[0]
        weight = state.get(f"{head}.weight") if head else None
        num_classes = int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else 0
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(
                f"{path} does not fit timm model {model_name!r} ({_first_line(e)})"
            ) from None
        spec = {
            "kind": KIND,
            "name": f"{KIND}:{model_name}:{path}",
            "model": model_name,
            "checkpoint": str(path),
            "sha256": file_sha256(path),
        }
        return cls._finish(model, spec, device)

    @classmethod
    def _finish(cls, model: Any, spec: dict[str, Any], device: str) -> TimmImageEncoder:
        import torch
        from timm.data import resolve_data_config

        model.eval().to(device)
        head = model.get_classifier()
        if isinstance(head, torch.nn.Linear):
            dim = head.in_features
        else:
            dim = getattr(model, "head_hidden_size", None) or model.num_features
        # Test-time input size, as timm's own validate.py evaluates by default.
        data_cfg = resolve_data_config({}, model=model, use_test_size=True)
        spec.update(
            dim=int(dim),
            num_classes=int(getattr(model, "num_classes", 0) or 0),
            preprocess={k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()},
        )
        return cls(model, spec, device)

    # -- interface ----------------------------------------------------------------------------
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from timm.data import create_transform
        from torchvision import transforms as T

        stored = self._spec["preprocess"]
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
        return T.Compose([to_rgb, create_transform(**cfg, is_training=False)])

    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> np.ndarray:
        """Pre-logits features: the input of the model's classifier, see :meth:`classifier`."""
        import torch

        out = []
        with torch.inference_mode(), autocast(self.device):
            for chunk in pixels.split(BATCH):
                x = self.model.forward_features(chunk.to(self.device, non_blocking=True))
                feats = self.model.forward_head(x, pre_logits=True).float()
                if normalize:
                    feats = torch.nn.functional.normalize(feats, dim=-1)
                out.append(feats.cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def classifier(self) -> Classifier | None:
        import torch

        head = self.model.get_classifier()
        if not isinstance(head, torch.nn.Linear) or head.in_features != self.dim:
            return None
        n = head.out_features
        weight = head.weight.detach().float().cpu().numpy()
        if head.bias is None:
            bias = np.zeros(n, np.float32)
        else:
            bias = head.bias.detach().float().cpu().numpy()
        if n == 1000:
            from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

            names = list(IMAGENET_CLASSNAMES)
        else:
            names = [f"class_{i}" for i in range(n)]
        return Classifier(weight=weight, bias=bias, class_names=names)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
