"""open_clip's image preprocessing as tensor operations (on any torch device): EXIF
orientation, shortest-side resize, centre crop, normalisation. Used by the GPU decoding
pipeline and, as :class:`TensorPreprocess`, by encoders to say whether their own
preprocessing can be mirrored this way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorPreprocess:
    """Shortest-side resize to ``size``, centre crop ``size`` x ``size``, normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> TensorPreprocess | None:
        """From an open_clip ``preprocess_cfg``; None for transforms this does not mirror
        (non-square sizes, squash/longest resize modes, other interpolations)."""
        size = cfg.get("size", 224)
        if isinstance(size, list | tuple):
            if len(size) != 2 or size[0] != size[1]:
                return None
            size = size[0]
        if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("mode", "RGB") != "RGB":
            return None
        interp = str(cfg.get("interpolation", "bicubic"))
        if interp not in ("bicubic", "bilinear"):
            return None
        mean, std = cfg.get("mean"), cfg.get("std")
        if mean is None or std is None:
            return None
        return cls(int(size), tuple(map(float, mean)), tuple(map(float, std)), interp)


def orient(x: Any, orientation: int) -> Any:
    """Apply an EXIF orientation to a (C, H, W) tensor, as Pillow's ``exif_transpose``."""
    import torch

    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, (-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, (-2, -1))
    return x


def resize_crop_normalise(img: Any, pp: TensorPreprocess) -> Any:
    """uint8 (3, H, W) or (N, 3, H, W) -> float32 (3, S, S) or (N, 3, S, S): open_clip's
    shortest-side resize (output size as torchvision computes it), centre crop and
    normalisation, as tensor ops.

    The resize is torch's antialiased bicubic (the same a=-0.5 kernel Pillow uses),
    rounded once to 0..255 where Pillow rounds after each pass.
    """
    import torch
    import torch.nn.functional as F

    single = img.dim() == 3
    x = (img.unsqueeze(0) if single else img).float()
    s = pp.size
    h, w = x.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(
            x, size=(new_h, new_w), mode=pp.interpolation, antialias=True, align_corners=False
        )
        x = x.clamp_(0, 255).round_()
    top = int(round((new_h - s) / 2.0))
    left = int(round((new_w - s) / 2.0))
    x = x[:, :, top : top + s, left : left + s]
    mean = torch.tensor(pp.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = x.div_(255.0).sub_(mean).div_(std)
    return x[0] if single else x
