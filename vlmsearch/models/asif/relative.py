"""ASIF relative representations (Norelli et al. 2022, arXiv 2210.01738).

An input is described by its similarities to N anchors of its own modality: keep the
top-k, clamp at 0 (an even power would turn negatives positive), raise to the power
p, L2-normalise. An image and a text are then compared by the inner product of their
descriptions, which is non-zero only where their top-k anchor sets overlap.

Defaults: k=800 as in the official code (capped at the anchor count). The power may
differ per side; anchor sets record a recommendation. DEFAULT_P=4 (data anchors), not
the official 8: measured with benchmarks/bench_asif.py on the ImageNet sample
(benchmarks/RESULTS.md), p=4 beats p=8 for data anchors (text->image R@10 0.466 vs
0.408), and the notes report the same direction on a held-out captioned photo set (0.64
vs 0.59). Prototype anchors record 2 (image) / 16 (text); see anchor_sources.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_K = 800  # official ASIF code (noranta4/ASIF)
DEFAULT_P = 4.0  # measured here; the official code uses 8 (see module docstring)

# How raw anchor scores become similarities s_i:
#   cosine  - inner product of L2-normalised embeddings (data anchors; text side);
#   softmax - a classifier's softmax over its logits (prototype anchors, image side).
#             Only the top-k logits are needed: the softmax denominator is the same for
#             every anchor of one query, so it cancels in the final L2 normalisation.
SIMILARITIES = ("cosine", "softmax")


def relative_from_topk(
    scores: np.ndarray, ids: np.ndarray, n_anchors: int, p: float, similarity: str = "cosine"
) -> np.ndarray:
    """Dense (n, n_anchors) relative representations from top-k search results.

    ``scores``/``ids`` are (n, k) as FAISS returns them, best first; an id of -1 is
    FAISS padding (k above the anchor count) and contributes nothing -- used as a
    Python index it would silently pick the last anchor.
    """
    scores = np.asarray(scores, np.float64)
    ids = np.asarray(ids, np.int64)
    valid = ids >= 0
    if similarity == "softmax":
        top = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        s = np.exp(np.where(valid, scores, -np.inf) - top)  # softmax up to its denominator
    elif similarity == "cosine":
        s = np.clip(np.where(valid, scores, 0.0), 0.0, None)
    else:
        raise ValueError(f"unknown anchor similarity {similarity!r}")
    s = np.where(valid, s, 0.0) ** p
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    s = np.divide(s, norm, out=np.zeros_like(s), where=norm > 0)
    out = np.zeros((len(ids), n_anchors), np.float32)
    rows = np.repeat(np.arange(len(ids)), ids.shape[1]).reshape(ids.shape)
    out[rows[valid], ids[valid]] = s[valid]
    return out


def relative_representations(
    index: Any,
    queries: np.ndarray,
    n_anchors: int,
    k: int = DEFAULT_K,
    p: float = DEFAULT_P,
    similarity: str = "cosine",
) -> np.ndarray:
    """Top-k anchors of each query from a FAISS inner-product ``index``, then
    :func:`relative_from_topk`. ``k`` is capped at the anchor count."""
    from vlmsearch.storage.ann import faiss_store

    k = max(1, min(int(k), n_anchors))
    q = np.ascontiguousarray(queries, np.float32)
    if len(q) == 0:
        return np.zeros((0, n_anchors), np.float32)
    scores, ids = faiss_store.search(index, q, k)
    return relative_from_topk(scores, ids, n_anchors, p, similarity)


def relative_from_dense(sims: np.ndarray, k: int, p: float) -> np.ndarray:
    """Relative representations from every anchor's similarity (n, N): keep each row's
    top-k, clamp at 0, raise to ``p``, L2-normalise."""
    s = np.clip(np.asarray(sims, np.float64), 0.0, None)
    n = s.shape[1]
    k = max(1, min(int(k), n))
    if k < n:
        drop = np.argpartition(-s, k - 1, axis=1)[:, k:]
        np.put_along_axis(s, drop, 0.0, axis=1)
    s = s**p
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    s = np.divide(s, norm, out=np.zeros_like(s), where=norm > 0)
    return s.astype(np.float32)
