"""Region crops encoded by the collection's own image encoder: the teacher's region
embeddings (ViLD's 1x + 1.5x context ensemble) and a region student's training targets.
Used by the teacher at search time and by distillation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlmsearch.imaging.bounded_resize import bounded
from vlmsearch.rerank.base import Box
from vlmsearch.rerank.region.proposals import CONTEXT, expand


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def teacher_targets(
    encoder: Any, image: Any, boxes: Sequence[Box], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(the teacher's region embeddings, a student's training targets) for ``boxes``.

    Each box is cropped at 1x and 1.5x context. The embeddings are the L2-normalised mean
    of the two crops' embeddings (ViLD's ensemble); the targets are the mean of the two
    crops' student features (:meth:`Encoder.student_features`: the embeddings themselves
    for a CLIP collection, so both are then the same)."""
    import torch

    w, h = image.size
    crops = [image.crop(tuple(round(v) for v in b)) for b in boxes]
    crops += [image.crop(tuple(round(v) for v in expand(b, CONTEXT, w, h))) for b in boxes]
    transform = bounded(encoder.image_transform())
    parts = [
        encoder.student_features(torch.stack([transform(c) for c in crops[i : i + batch_size]]))
        for i in range(0, len(crops), batch_size)
    ]
    feats = np.concatenate(parts).astype(np.float32)
    n = len(boxes)
    emb = np.asarray(encoder.from_student_features(feats), np.float32)
    teacher = _normalize(emb[:n] + emb[n:])
    pair = feats[:n] + feats[n:]
    target = _normalize(pair) if encoder.student_features_normalized else pair / 2
    return teacher, target


def teacher_embeddings(
    encoder: Any, image: Any, boxes: Sequence[Box], batch_size: int = 64
) -> np.ndarray:
    """L2-normalised mean of each box's crop embedding at 1x and 1.5x context."""
    return teacher_targets(encoder, image, boxes, batch_size)[0]


def crop_seconds(encoder: Any, batch_size: int = 64) -> float:
    """Measured seconds to encode one crop: a timed batch of blank crops after a warm-up
    (the estimate printed before a slow teacher run)."""
    import time

    import torch
    from PIL import Image

    transform = encoder.image_transform()
    one = transform(Image.new("RGB", (256, 256), (128, 128, 128)))
    n = max(2, min(8, batch_size))
    encoder.student_features(torch.stack([one] * 2))  # first-call overheads
    t0 = time.perf_counter()
    encoder.student_features(torch.stack([one] * n))
    return (time.perf_counter() - t0) / n
