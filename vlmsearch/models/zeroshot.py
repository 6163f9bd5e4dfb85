"""Zero-shot classification from label text.

Two rules combine a label's prompts (every template filled with the label):

- ``mean`` (CLIP, Radford et al. 2021): class weight = mean of the L2-normalised prompt
  embeddings, normalised again; score = cosine with the image.
- ``best`` (the official ASIF code): score = the best single prompt's cosine.

logits = 100 * score (CLIP's trained logit scale is about 100); probabilities by softmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.models.encoders.base import TextEmbedder

LOGIT_SCALE = 100.0  # CLIP's learned temperature, about 100 (algorithms notes)
Template = Callable[[str], str]


def load_templates(name: str = "openai") -> list[Template]:
    """``openai`` (CLIP's 80 ImageNet templates), ``simple`` (7), or a file of lines with {}.
    The built-in ones are data (:mod:`vlmsearch.models.prompt_templates`): nothing is imported."""
    from vlmsearch.models.prompt_templates import BUILT_IN

    if name in BUILT_IN:
        return [t.format for t in BUILT_IN[name]]
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
    encoder: TextEmbedder,
    labels: Sequence[str],
    templates: Sequence[Template],
    spec: dict[str, Any] | None = None,
) -> np.ndarray:
    """Per-label mean prompt embeddings, normalised; with the encoder's ``spec`` they are
    cached on disk (:mod:`vlmsearch.models.label_cache`)."""
    from vlmsearch.models.label_cache import cached

    per = max(1, PROMPT_CHUNK // max(1, len(templates)))
    parts = []
    for lo in range(0, len(labels), per):
        chunk = labels[lo : lo + per]
        prompts = [t(label) for label in chunk for t in templates]

        def mean_of(chunk: Sequence[str] = chunk, prompts: list[str] = prompts) -> np.ndarray:
            emb = encoder.encode_texts(prompts)
            return emb.reshape(len(chunk), len(templates), -1).mean(axis=1)

        parts.append(cached(spec, f"mean/{len(templates)}", prompts, mean_of))
    mean = np.concatenate(parts)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


RULES = ("mean", "best")
PROMPT_CHUNK = 20_000  # prompts embedded at once (bounds memory for wide ASIF vectors)


def class_scores(
    encoder: TextEmbedder,
    image_vectors: Any,
    labels: Sequence[str],
    templates: Sequence[Template],
    rule: str = "mean",
    spec: dict[str, Any] | None = None,
) -> np.ndarray:
    """(n_images, n_labels) scores; ``image_vectors`` may be a dense array or scipy sparse.
    ``spec`` (the encoder's) caches the label embeddings on disk."""
    from vlmsearch.models.label_cache import cached

    if rule not in RULES:
        raise QueryError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "mean":
        return _matmul(image_vectors, class_weights(encoder, labels, templates, spec))
    per = max(1, PROMPT_CHUNK // max(1, len(templates)))
    out = np.zeros((image_vectors.shape[0], len(labels)), np.float32)
    for lo in range(0, len(labels), per):
        chunk = labels[lo : lo + per]
        prompts = [t(label) for label in chunk for t in templates]
        emb = cached(spec, "prompts", prompts, lambda p=prompts: encoder.encode_texts(p))
        s = _matmul(image_vectors, emb).reshape(-1, len(chunk), len(templates))
        out[:, lo : lo + len(chunk)] = s.max(axis=2)
    return out


def _matmul(image_vectors: Any, weights: np.ndarray) -> np.ndarray:
    return np.asarray(image_vectors.astype(np.float32) @ weights.T, np.float32)


def softmax_scores(scores: np.ndarray) -> np.ndarray:
    logits = LOGIT_SCALE * scores.astype(np.float32)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def probabilities(image_vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    logits = LOGIT_SCALE * (image_vectors.astype(np.float32) @ weights.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
