"""Zero-shot classification from label text (CLIP, Radford et al. 2021).

Class weight = mean of the L2-normalised embeddings of every template filled with the
label, normalised again; logits = 100 * cosine (CLIP's trained logit scale is about
100); probabilities by softmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.retrieval.encoders.base import Encoder

LOGIT_SCALE = 100.0  # CLIP's learned temperature, about 100 (algorithms notes)
Template = Callable[[str], str]


def load_templates(name: str = "openai") -> list[Template]:
    """``openai`` (CLIP's 80 ImageNet templates), ``simple`` (7), or a file of lines with {}."""
    from open_clip import zero_shot_metadata as zsm

    if name == "openai":
        return list(zsm.OPENAI_IMAGENET_TEMPLATES)
    if name == "simple":
        return list(zsm.SIMPLE_IMAGENET_TEMPLATES)
    path = Path(name).expanduser()
    if not path.is_file():
        raise QueryError(f"--templates must be openai, simple or a file; {name!r} is neither")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    bad = [ln for ln in lines if "{}" not in ln]
    if not lines or bad:
        raise QueryError(f"{path}: every template line needs a '{{}}' for the label")
    return [ln.format for ln in lines]


def parse_labels(labels: str | Sequence[str] | None, labels_file: str | None = None) -> list[str]:
    out: list[str] = []
    if labels:
        items = labels.split(",") if isinstance(labels, str) else list(labels)
        out += [s.strip() for s in items if s.strip()]
    if labels_file:
        path = Path(labels_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise QueryError(f"cannot read labels file {path}: {e.strerror or e}") from None
        out += [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(out) < 2:
        raise QueryError("give at least two labels (--labels 'cat,dog' or --labels-file)")
    if len(set(out)) != len(out):
        raise QueryError("labels must be distinct")
    return out


def class_weights(
    encoder: Encoder, labels: Sequence[str], templates: Sequence[Template]
) -> np.ndarray:
    prompts = [t(label) for label in labels for t in templates]
    emb = encoder.encode_texts(prompts).reshape(len(labels), len(templates), -1)
    mean = emb.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def probabilities(image_vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    logits = LOGIT_SCALE * (image_vectors.astype(np.float32) @ weights.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
