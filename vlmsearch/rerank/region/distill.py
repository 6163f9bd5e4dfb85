"""Distilling the region teacher into a student (``vlmsearch distill``), ViLD-style.

The teacher's crop embeddings (the collection's own encoder on each crop, 1x and 1.5x
context averaged) are computed once per image over the collection's own images; the
student learns them with ViLD-image's L1 loss, and with ViLD-text's loss too when label
text is given. A share of the images is held out to measure the student against the
teacher (mean cosine) before training, after the linear branch's fit, and after training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import CollectionError, QueryError
from vlmsearch.rerank.region.crops import teacher_targets
from vlmsearch.rerank.region.proposals import region_boxes
from vlmsearch.rerank.region.student import (
    INPUT_SIZE,
    RegionStudent,
    StudentConfig,
    build_module,
    image_tensor,
    scaled_boxes,
)

if TYPE_CHECKING:
    import torch

    from vlmsearch.rerank.view import CollectionView, StudentHome

TEXT_TEMPERATURE = 0.01  # ViLD-text: logits = cos / 0.01 (notes/algorithms.md)
IMAGE_LOSS_WEIGHT = 0.5  # ViLD: L = L_text + 0.5 L_image for R50 (notes/algorithms.md)
BACKGROUND_MIN_PROB = 0.5  # a region is "background" when the teacher's best label is weaker
RIDGE = 1e-2  # ridge strength, relative to the mean feature variance (keeps the solve stable)

# (pixels, boxes in student input pixels, training targets, teacher embeddings)
Sample = tuple["torch.Tensor", "torch.Tensor", np.ndarray, np.ndarray]


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
    collection: StudentHome,
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
    """Train a region student for ``collection`` and (with ``save``) store it there.

    ``collection`` is anything with the stored data, the encoder and
    ``save_region_student`` (a :class:`~vlmsearch.collection.Collection` is one).
    """
    import torch

    from vlmsearch.models.encoders.base import Encoder
    from vlmsearch.runtime import resolve_device

    _check_request(collection, epochs, max_images, labels)
    encoder = collection.encoder
    dev = resolve_device(device)
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    samples, teacher_time = _teacher_samples(collection, max_images, rng, progress)
    train_bb = backbone == "tiny" if train_backbone is None else train_backbone
    cfg = StudentConfig(
        backbone, int(samples[0][2].shape[1]), INPUT_SIZE, train_backbone=train_bb,
        labels=list(labels or []), space=encoder.student_space,
        normalize=encoder.student_features_normalized, linear_branch=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    module = build_module(cfg).to(dev)
    n_held = min(max(1, round(len(samples) * held_out)), len(samples) - 1)
    order = rng.permutation(len(samples))
    run = _Training(module, encoder, dev, train_bb, labels)
    run.held = [samples[j] for j in order[:n_held]]
    run.train = [samples[j] for j in order[n_held:]]
    run.freeze_backbone()
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    before = run.held_cosine()
    run.fit_linear()
    linear = run.held_cosine()
    losses: list[float] = []
    module.train()
    for _epoch in range(epochs):
        losses.append(run.epoch(opt, rng))
        if progress:
            progress("train", 1, epochs)
    module.eval()
    after = run.held_cosine()
    student = RegionStudent(cfg, module, dev, encoder.from_student_features)
    student_time = run.student_seconds()
    report = DistillReport(
        images=len(samples), held_out=len(run.held), regions=sum(len(s[1]) for s in samples),
        epochs=epochs, losses=[round(v, 5) for v in losses],
        held_out_cosine_before=round(before, 4), held_out_cosine_after=round(after, 4),
        held_out_cosine_linear=round(linear, 4),
        teacher_seconds_per_image=round(teacher_time / (len(samples) - 1), 5),
        student_seconds_per_image=round(student_time, 5), backbone=backbone,
        text_loss=run.text_emb is not None, seconds=round(time.perf_counter() - t_start, 2),
        space=cfg.space,
    )  # fmt: skip
    if save:
        info = {
            "encoder": Encoder.identity(collection.manifest["encoder"]),
            "config": asdict(cfg),
            "report": report.to_dict(),
        }
        collection.save_region_student(student, info)
    return student, report


def _check_request(
    collection: CollectionView, epochs: int, max_images: int, labels: Sequence[str] | None
) -> None:
    if epochs < 1 or max_images < 2:
        raise QueryError("distill needs at least 1 epoch and 2 images")
    encoder = collection.encoder
    if labels and encoder.student_space != "embedding":
        # ViLD-text compares region embeddings with text embeddings; a features-space
        # student's embeddings come out of a non-differentiable anchor projection
        raise QueryError(
            "label text (ViLD-text) needs a collection whose student predicts embeddings; "
            f"this {encoder.kind} collection's student predicts features. Distil without labels"
        )


def _teacher_samples(
    collection: CollectionView,
    max_images: int,
    rng: np.random.Generator,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[list[Sample], float]:
    """The teacher's crop embeddings and the student's targets for up to ``max_images``
    images (the expensive part, done once), and the teacher's seconds over all but the
    first image (which also pays for warm-up)."""
    import torch

    from vlmsearch.imaging.decode import ImageDecodeError, load_image

    ids = collection.vectors.ids
    if len(ids) < 2:
        raise CollectionError("distill needs a collection with at least 2 indexed images")
    ids = np.sort(rng.permutation(ids)[:max_images])
    rows = collection.rows(ids)
    samples: list[Sample] = []
    teacher_time = 0.0
    for i in ids.tolist():
        try:
            image = load_image(collection.root / names.row_path(rows[i]))
        except ImageDecodeError:
            continue  # a file gone or changed since indexing: skipped
        boxes = region_boxes(image)
        t0 = time.perf_counter()
        teacher, target = teacher_targets(collection.encoder, image, boxes)
        if samples:
            teacher_time += time.perf_counter() - t0
        w, h = image.size
        pixels = image_tensor(image, INPUT_SIZE)
        box_t = torch.from_numpy(scaled_boxes(boxes, w, h, INPUT_SIZE))
        samples.append((pixels, box_t, target, teacher))
        if progress:
            progress("teacher", 1, len(ids))
    if len(samples) < 2:
        raise CollectionError("fewer than 2 images of the collection could be read")
    return samples, teacher_time


class _Training:
    """One distillation run: the student module, its data, and the steps of training."""

    def __init__(
        self,
        module: Any,
        encoder: Any,
        dev: str,
        train_backbone: bool,
        labels: Sequence[str] | None,
    ) -> None:
        import torch

        self.module, self.encoder, self.dev = module, encoder, dev
        self.train_backbone = train_backbone
        self.space = encoder.student_space
        self.train: list[Sample] = []
        self.held: list[Sample] = []
        self.fmaps: list[torch.Tensor] | None = None  # a frozen backbone's, computed once
        self.text_emb = None
        if labels:
            prompts = [f"a photo of a {lab}." for lab in labels]
            self.text_emb = torch.from_numpy(encoder.encode_texts(prompts)).to(dev)

    def freeze_backbone(self) -> None:
        """Unless the backbone trains too, freeze it and compute its maps of the training
        images once (no_grad, not inference_mode: the head's autograd must use them)."""
        import torch

        if self.train_backbone:
            return
        for p in self.module.backbone.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.fmaps = [self.module.features(s[0][None].to(self.dev)) for s in self.train]

    def _fmap(self, j: int) -> torch.Tensor:
        if self.fmaps is not None:
            return self.fmaps[j]
        return self.module.features(self.train[j][0][None].to(self.dev))

    def held_cosine(self) -> float:
        """Mean cosine of the student's region embeddings to the teacher's, held out."""
        import torch

        module = self.module
        module.eval()
        cos = []
        with torch.inference_mode():
            for x, b, _, teacher in self.held:
                out = module.regions(module.features(x[None].to(self.dev)), [b.to(self.dev)])
                emb = out.float().cpu().numpy()
                if self.space != "embedding":
                    emb = self.encoder.from_student_features(emb)
                cos.append(float((emb * teacher).sum(axis=1).mean()))
        module.train()
        return float(np.mean(cos))

    def fit_linear(self) -> None:
        import torch

        with torch.no_grad():
            maps = [self._fmap(j) for j in range(len(self.train))]
            boxes = [t[1].to(self.dev) for t in self.train]
            targets = [torch.from_numpy(t[2]).to(self.dev) for t in self.train]
            fit_linear_branch(self.module, maps, boxes, targets)

    def epoch(self, opt: Any, rng: np.random.Generator) -> float:
        """One pass over the training images in a random order; returns the mean loss."""
        import torch

        total = 0.0
        for j in rng.permutation(len(self.train)).tolist():
            _, b, t, _ = self.train[j]
            emb = self.module.regions(self._fmap(j), [b.to(self.dev)])
            target = torch.from_numpy(t).to(self.dev)
            loss = (emb - target).abs().sum(dim=-1).mean()  # ViLD-image: L1 to the teacher
            if self.text_emb is not None:
                bg = torch.nn.functional.normalize(self.module.background, dim=0)[None]
                logits = emb @ torch.cat([bg, self.text_emb]).T / TEXT_TEMPERATURE
                labels = self._pseudo_labels(target)
                loss = torch.nn.functional.cross_entropy(logits, labels) + IMAGE_LOSS_WEIGHT * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        return total / len(self.train)

    def _pseudo_labels(self, target: torch.Tensor) -> torch.Tensor:
        """ViLD-text trains on box labels; with none here, the teacher's label is the target
        (background when its best label has probability below BACKGROUND_MIN_PROB)."""
        import torch

        assert self.text_emb is not None
        probs = (target @ self.text_emb.T / TEXT_TEMPERATURE).softmax(dim=-1)
        best = probs.max(dim=-1)
        return torch.where(best.values >= BACKGROUND_MIN_PROB, best.indices + 1, 0)

    def student_seconds(self) -> float:
        """The trained student's seconds per held-out image, after a warm-up (timed like the
        teacher; the anchor projection of a features-space student is part of its cost)."""
        import torch

        module, dev = self.module, self.dev

        def one(x: torch.Tensor, b: torch.Tensor) -> None:
            with torch.inference_mode():
                out = module.regions(module.features(x[None].to(dev)), [b.to(dev)])
                if self.space != "embedding":
                    self.encoder.from_student_features(out.float().cpu().numpy())

        one(*self.held[0][:2])
        t0 = time.perf_counter()
        for x, b, _, _ in self.held:
            one(x, b)
        return (time.perf_counter() - t0) / len(self.held)
