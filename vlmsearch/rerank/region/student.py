"""The region student of ViLD-style reranking: one backbone pass per image, then RoIAlign
and a projection to the collection's embedding space for every region at once.

Trained by :func:`vlmsearch.rerank.region.distill.distill` with ViLD-image's L1 loss to
the teacher's crop embeddings, over the collection's own images. Saved in the collection
(``student-<generation>.pt``) and used by ``--rerank region``.

What it predicts follows the encoder's ``student_space``: the L2-normalised embedding for
CLIP collections (ViLD), or for ASIF collections the image encoder's dense features, which
the anchors then turn into relative representations exactly as for a crop.

Backbones: ``efficientnet-lite0`` (ImageNet weights from the offline extra, frozen by
default), ``timm:NAME[:/path/to/weights]`` (features of the last stage), and ``tiny``
(a three-layer CNN with random weights, trained with the head; for tests and speed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import CollectionError, ModelError
from vlmsearch.rerank.base import Box

if TYPE_CHECKING:
    import torch

    from vlmsearch.rerank.view import CollectionView

INPUT_SIZE = 320  # the backbone sees the whole image resized to a square of this side
ROI_SIZE = 7  # RoIAlign output, as in Fast R-CNN heads
REDUCED = 256  # channels after the 1x1 reduction ahead of RoIAlign
HIDDEN = 1024


@dataclass
class StudentConfig:
    backbone: str
    dim: int
    input_size: int = INPUT_SIZE
    train_backbone: bool = False
    labels: list[str] = field(default_factory=list)
    space: str = "embedding"  # or "features": see Encoder.student_space
    normalize: bool = True  # L2-normalise the output (false for raw classifier features)
    linear_branch: bool = False  # students before this branch existed have none


def _tiny_backbone() -> tuple[Any, int, int]:
    """Three stride-2 convolutions (stride 8, 64 channels); random init."""
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
    )  # fmt: skip
    return net, 8, 64


def build_backbone(name: str) -> tuple[Any, int, int, tuple[float, ...], tuple[float, ...]]:
    """(module mapping pixels to a feature map, stride, channels, mean, std)."""
    import torch
    from torch import nn

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if name == "tiny":
        net, stride, ch = _tiny_backbone()
        return net, stride, ch, *imagenet
    if name == "efficientnet-lite0":
        from vlmsearch.models.unimodal.efficientnet_lite import MEAN, STD, EfficientNetLite0

        lite = EfficientNetLite0.from_name(None, device="cpu").model

        class LiteFeatures(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = lite

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.model.extract_features(x)

        return LiteFeatures(), 32, 1280, MEAN, STD
    if name.startswith("timm:"):
        import timm

        model_name, _, weights = name[5:].partition(":")
        try:
            net = timm.create_model(
                model_name, pretrained=False, features_only=True, out_indices=(-1,)
            )
        except Exception as e:  # timm raises several types for unknown names
            raise ModelError(f"cannot build timm backbone {model_name!r}: {e}") from None
        if weights:
            state = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=False)
        info = net.feature_info
        cfg = net.pretrained_cfg or {}

        class Last(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)[-1]

        return (
            Last(), int(info.reduction()[-1]), int(info.channels()[-1]),
            tuple(cfg.get("mean", imagenet[0])), tuple(cfg.get("std", imagenet[1])),
        )  # fmt: skip
    raise ModelError(f"unknown backbone {name!r}: efficientnet-lite0, timm:NAME or tiny")


def build_module(cfg: StudentConfig) -> Any:
    """The student network for ``cfg``, untrained (a torch ``nn.Module``)."""
    import torch
    from torch import nn

    backbone, stride, channels, mean, std = build_backbone(cfg.backbone)

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.reduce = nn.Sequential(nn.Conv2d(channels, REDUCED, 1), nn.ReLU())
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(REDUCED * ROI_SIZE * ROI_SIZE, HIDDEN), nn.ReLU(),
                nn.Linear(HIDDEN, cfg.dim),
            )  # fmt: skip
            # a linear map of each box's mean-pooled backbone features, started at the ridge
            # regression solution (fit_linear_branch); the MLP learns what it cannot say
            self.linear = nn.Linear(channels, cfg.dim) if cfg.linear_branch else None
            self.background = nn.Parameter(torch.randn(cfg.dim) * 0.02)  # ViLD-text
            self.stride = stride
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def features(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.backbone((pixels - self.mean) / self.std)

        def box_means(self, fmap: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
            """Each box's mean backbone feature vector (RoIAlign, then the mean)."""
            return self._roi(fmap, boxes).mean(dim=(2, 3))

        def _roi(self, fmap: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
            from torchvision.ops import roi_align

            return roi_align(
                fmap, boxes, output_size=ROI_SIZE, spatial_scale=1.0 / self.stride,
                sampling_ratio=2, aligned=True,
            )  # fmt: skip

        def regions(self, fmap: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
            out = self.head(self._roi(self.reduce(fmap), boxes))
            if self.linear is not None:
                out = out + self.linear(self.box_means(fmap, boxes))
            return torch.nn.functional.normalize(out, dim=-1) if cfg.normalize else out

    return Student()


def image_tensor(image: Any, size: int) -> torch.Tensor:
    """The whole image as a (3, size, size) tensor in [0, 1]."""
    import torch

    im = image.convert("RGB").resize((size, size), resample=3)  # bicubic
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def scaled_boxes(boxes: Sequence[Box], width: int, height: int, size: int) -> np.ndarray:
    sx, sy = size / width, size / height
    return np.asarray(
        [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes], np.float32
    )


class RegionStudent:
    """A trained student, ready to embed an image's regions."""

    def __init__(
        self,
        cfg: StudentConfig,
        module: Any,
        device: str = "cpu",
        project: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """``project`` maps the module's output into the collection's embedding space
        (the encoder's ``from_student_features``; needed when ``cfg.space == "features"``)."""
        if cfg.space != "embedding" and project is None:
            raise ModelError("this region student predicts features: it needs the encoder")
        self.cfg = cfg
        self.module = module.to(device).eval()
        self.device = device
        self.project = project

    def predict(self, image: Any, boxes: Sequence[Box]) -> np.ndarray:
        """The module's raw output for ``boxes`` (the student space)."""
        import torch

        w, h = image.size
        x = image_tensor(image, self.cfg.input_size)[None].to(self.device)
        b = torch.from_numpy(scaled_boxes(boxes, w, h, self.cfg.input_size)).to(self.device)
        with torch.inference_mode():
            return self.module.regions(self.module.features(x), [b]).float().cpu().numpy()

    def embed(self, image: Any, boxes: Sequence[Box]) -> np.ndarray:
        """Region embeddings in the collection's space, comparable with its queries."""
        out = self.predict(image, boxes)
        return self.project(out) if self.cfg.space != "embedding" and self.project else out

    def save(self, path: Path) -> None:
        import torch

        from vlmsearch.storage.atomic import atomic_write

        state = {k: v.cpu() for k, v in self.module.state_dict().items()}
        payload = {"config": asdict(self.cfg), "state_dict": state}
        atomic_write(path, lambda p: torch.save(payload, p))

    @classmethod
    def read(
        cls,
        path: Path,
        device: str = "cpu",
        project: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> RegionStudent:
        import torch

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as e:
            raise CollectionError(f"cannot read the region student {path}: {e}") from None
        cfg = StudentConfig(**payload["config"])
        module = build_module(cfg)
        module.load_state_dict(payload["state_dict"])
        return cls(cfg, module, device, project)


_CACHE: dict[tuple[str, str], RegionStudent] = {}


def has_student(collection: CollectionView) -> bool:
    """Whether the collection has a student for its current encoder (manifest only)."""
    from vlmsearch.models.encoders.base import Encoder

    entry = collection.manifest.get("region_student")
    return bool(entry) and entry.get("encoder") == Encoder.identity(
        collection.manifest["encoder"]
    )


def load_student(collection: CollectionView, device: str | None = None) -> RegionStudent | None:
    """The collection's student, if one was trained for its current encoder."""
    from vlmsearch.models.encoders.base import Encoder
    from vlmsearch.runtime import resolve_device

    entry = collection.manifest.get("region_student")
    if not entry:
        return None
    if entry.get("encoder") != Encoder.identity(collection.manifest["encoder"]):
        return None  # trained for another encoder: its embeddings are not comparable
    from vlmsearch.storage.integrity import verify

    path = verify(collection.layout.path, collection.manifest, entry["file"])
    dev = resolve_device(device)
    key = (str(path), dev)
    if key not in _CACHE:
        _CACHE[key] = RegionStudent.read(path, dev, collection.encoder.from_student_features)
    return _CACHE[key]
