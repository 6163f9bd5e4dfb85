"""The region student of ViLD-style reranking: one backbone pass per image, then RoIAlign
and a projection to the collection's embedding space for every region at once.

Trained by :func:`distill` with ViLD-image's L1 loss to the teacher's crop embeddings
(the collection's own encoder on each crop, 1x and 1.5x context averaged), over the
collection's own images; optionally with ViLD-text's loss when label text is given.
Saved in the collection (``student-<generation>.pt``) and used by ``--rerank region``.

What it predicts follows the encoder's ``student_space``: the L2-normalised embedding for
CLIP collections (ViLD), or for ASIF collections the image encoder's dense features, which
the anchors then turn into relative representations exactly as for a crop.

Backbones: ``efficientnet-lite0`` (ImageNet weights from the offline extra, frozen by
default), ``timm:NAME[:/path/to/weights]`` (features of the last stage), and ``tiny``
(a three-layer CNN with random weights, trained with the head; for tests and speed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import CollectionError, ModelError, QueryError
from vlmsearch.rerank.base import Box

if TYPE_CHECKING:
    import torch

    from vlmsearch.rerank.view import CollectionView

INPUT_SIZE = 320  # the backbone sees the whole image resized to a square of this side
ROI_SIZE = 7  # RoIAlign output, as in Fast R-CNN heads
REDUCED = 256  # channels after the 1x1 reduction ahead of RoIAlign
HIDDEN = 1024
TEXT_TEMPERATURE = 0.01  # ViLD-text: logits = cos / 0.01 (notes/algorithms.md)
IMAGE_LOSS_WEIGHT = 0.5  # ViLD: L = L_text + 0.5 L_image for R50 (notes/algorithms.md)
BACKGROUND_MIN_PROB = 0.5  # a region is "background" when the teacher's best label is weaker


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


def _module(cfg: StudentConfig) -> Any:
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
        module = _module(cfg)
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


# -- training ------------------------------------------------------------------------------------
RIDGE = 1e-2  # ridge strength, relative to the mean feature variance (keeps the solve stable)


def fit_linear_branch(
    module: Any,
    fmaps: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
) -> None:
    """Start the linear branch at the ridge-regression map from box-mean backbone features
    to the targets, and the MLP's last layer at zero: training then starts from the best
    linear student and the MLP learns the residual. A closed-form fit is cheap next to the
    teacher and gives the (often far off) raw-feature targets of ASIF students a sane start."""
    import torch

    if module.linear is None:
        return
    x = torch.cat([module.box_means(f, [b]) for f, b in zip(fmaps, boxes, strict=True)]).double()
    y = torch.cat(list(targets)).double()
    mx, my = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
    w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), xc.T @ yc)
    module.linear.weight.copy_(w.T.float())
    module.linear.bias.copy_((my - mx @ w).float())
    last = module.head[-1]
    last.weight.zero_()
    last.bias.zero_()


@dataclass
class DistillReport:
    images: int
    held_out: int
    regions: int
    epochs: int
    losses: list[float]
    held_out_cosine_before: float
    held_out_cosine_after: float
    held_out_cosine_linear: float  # after the linear branch's closed-form fit, before training
    teacher_seconds_per_image: float
    student_seconds_per_image: float
    backbone: str
    text_loss: bool
    seconds: float
    space: str = "embedding"

    @property
    def speedup(self) -> float:
        return self.teacher_seconds_per_image / max(self.student_seconds_per_image, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": round(self.speedup, 2)}


def distill(
    collection: Any,
    backbone: str = "efficientnet-lite0",
    *,
    epochs: int = 20,
    max_images: int = 200,
    held_out: float = 0.1,
    labels: Sequence[str] | None = None,
    train_backbone: bool | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    save: bool = True,
) -> tuple[RegionStudent, DistillReport]:
    """Train a region student for ``collection`` and (with ``save``) store it there."""
    import torch

    from vlmsearch.imaging.decode import ImageDecodeError, load_image
    from vlmsearch.models.encoders.base import Encoder
    from vlmsearch.rerank.region.teacher import region_boxes, teacher_targets
    from vlmsearch.runtime import resolve_device

    if epochs < 1 or max_images < 2:
        raise QueryError("distill needs at least 1 epoch and 2 images")
    encoder = collection.encoder
    space = encoder.student_space
    if labels and space != "embedding":
        # ViLD-text compares region embeddings with text embeddings; a features-space
        # student's embeddings come out of a non-differentiable anchor projection
        raise QueryError(
            "label text (ViLD-text) needs a collection whose student predicts embeddings; "
            f"this {encoder.kind} collection's student predicts features. Distil without labels"
        )
    dev = resolve_device(device)
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    ids = collection.vectors.ids
    if len(ids) < 2:
        raise CollectionError("distill needs a collection with at least 2 indexed images")
    ids = np.sort(rng.permutation(ids)[:max_images])
    rows = collection.rows(ids)
    train_bb = backbone == "tiny" if train_backbone is None else train_backbone

    # the teacher's crop embeddings and the student's targets, once per image (the
    # expensive part); samples are (pixels, boxes, targets, teacher embeddings)
    samples: list[tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]] = []
    teacher_time = 0.0
    input_size = INPUT_SIZE
    for i in ids.tolist():
        try:
            image = load_image(collection.root / names.row_path(rows[i]))
        except ImageDecodeError:
            continue  # a file gone or changed since indexing: skipped
        boxes = region_boxes(image)
        t0 = time.perf_counter()
        teacher, target = teacher_targets(encoder, image, boxes)
        if samples:  # the first image also pays for warm-up: not timed
            teacher_time += time.perf_counter() - t0
        w, h = image.size
        samples.append(
            (
                image_tensor(image, input_size),
                torch.from_numpy(scaled_boxes(boxes, w, h, input_size)),
                target,
                teacher,
            )
        )
        if progress:
            progress("teacher", 1, len(ids))
    if len(samples) < 2:
        raise CollectionError("fewer than 2 images of the collection could be read")
    cfg = StudentConfig(
        backbone, int(samples[0][2].shape[1]), input_size, train_backbone=train_bb,
        labels=list(labels or []), space=space, normalize=encoder.student_features_normalized,
        linear_branch=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    module = _module(cfg).to(dev)
    n_held = min(max(1, round(len(samples) * held_out)), len(samples) - 1)
    order = rng.permutation(len(samples))
    held = [samples[j] for j in order[:n_held]]
    train = [samples[j] for j in order[n_held:]]

    text_emb = None
    if labels:
        prompts = [f"a photo of a {lab}." for lab in labels]
        text_emb = torch.from_numpy(collection.encoder.encode_texts(prompts)).to(dev)

    def pseudo_labels(target: torch.Tensor) -> torch.Tensor:
        # ViLD-text trains on box labels; with none here, the teacher's label is the target
        # (background when its best label has probability below BACKGROUND_MIN_PROB)
        assert text_emb is not None
        probs = (target @ text_emb.T / TEXT_TEMPERATURE).softmax(dim=-1)
        best = probs.max(dim=-1)
        return torch.where(best.values >= BACKGROUND_MIN_PROB, best.indices + 1, 0)

    if not train_bb:
        for p in module.backbone.parameters():
            p.requires_grad_(False)
        with torch.no_grad():  # a frozen backbone's maps are computed once (no_grad, not
            # inference_mode: the head's autograd must be able to use them)
            fmaps = [module.features(s[0][None].to(dev)) for s in train]
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)

    def held_cosine() -> float:
        """Mean cosine of the student's region embeddings to the teacher's, held out."""
        module.eval()
        cos = []
        with torch.inference_mode():
            for x, b, _, teacher in held:
                out = module.regions(module.features(x[None].to(dev)), [b.to(dev)])
                emb = out.float().cpu().numpy()
                if space != "embedding":
                    emb = encoder.from_student_features(emb)
                cos.append(float((emb * teacher).sum(axis=1).mean()))
        module.train()
        return float(np.mean(cos))

    before = held_cosine()
    with torch.no_grad():
        maps = fmaps if not train_bb else [module.features(t[0][None].to(dev)) for t in train]
        boxes_t = [t[1].to(dev) for t in train]
        fit_linear_branch(module, maps, boxes_t, [torch.from_numpy(t[2]).to(dev) for t in train])
    linear = held_cosine()
    losses: list[float] = []
    module.train()
    for _epoch in range(epochs):
        total = 0.0
        for j in rng.permutation(len(train)).tolist():
            x, b, t, _ = train[j]
            fmap = fmaps[j] if not train_bb else module.features(x[None].to(dev))
            emb = module.regions(fmap, [b.to(dev)])
            target = torch.from_numpy(t).to(dev)
            loss = (emb - target).abs().sum(dim=-1).mean()  # ViLD-image: L1 to the teacher
            if text_emb is not None:
                bg = torch.nn.functional.normalize(module.background, dim=0)[None]
                logits = emb @ torch.cat([bg, text_emb]).T / TEXT_TEMPERATURE
                text_loss = torch.nn.functional.cross_entropy(logits, pseudo_labels(target))
                loss = text_loss + IMAGE_LOSS_WEIGHT * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / len(train))
        if progress:
            progress("train", 1, epochs)
    module.eval()
    after = held_cosine()
    student = RegionStudent(cfg, module, dev, encoder.from_student_features)

    def student_pass(x: torch.Tensor, b: torch.Tensor) -> None:
        with torch.inference_mode():
            out = module.regions(module.features(x[None].to(dev)), [b.to(dev)])
            if space != "embedding":  # the projection is part of the student's cost
                encoder.from_student_features(out.float().cpu().numpy())

    student_pass(*held[0][:2])  # warm-up, then timed like the teacher
    t0 = time.perf_counter()
    for x, b, _, _ in held:
        student_pass(x, b)
    student_time = (time.perf_counter() - t0) / len(held)
    n_regions = sum(len(s[1]) for s in samples)
    report = DistillReport(
        images=len(samples), held_out=len(held), regions=n_regions, epochs=epochs,
        losses=[round(v, 5) for v in losses], held_out_cosine_before=round(before, 4),
        held_out_cosine_after=round(after, 4), held_out_cosine_linear=round(linear, 4),
        teacher_seconds_per_image=round(teacher_time / (len(samples) - 1), 5),
        student_seconds_per_image=round(student_time, 5), backbone=backbone,
        text_loss=text_emb is not None, seconds=round(time.perf_counter() - t_start, 2),
        space=space,
    )  # fmt: skip
    if save:
        info = {
            "encoder": Encoder.identity(collection.manifest["encoder"]),
            "config": asdict(cfg),
            "report": report.to_dict(),
        }
        collection.save_region_student(student, info)
    return student, report
