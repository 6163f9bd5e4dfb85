"""Calibrated scores: a text query's raw similarity mapped to a probability-like value.

A raw score (cosine for CLIP, the ASIF inner product of relative representations) ranks
well within one query but means different things for different encoders, so a cut-off
such as ``--min-score`` cannot be chosen once. Platt scaling (Platt 1999) fits
``p = 1 / (1 + exp(-(a * raw + b)))`` on held-out (caption, image) pairs, with the
matching pairs weighted to a fixed share ``PRIOR`` of all pairs: ``p`` is the chance that
an image matches the query in a collection where one image in a hundred does, whatever
the size of the gallery it was fitted on. It is monotone, so it never reorders the hits
of a query, and depends on the encoder alone, so scores compare across collections and,
fitted the same way, across encoders. How precise a cut-off is in a collection still
depends on how many of its images match; ``eval retrieval --calibrate`` reports
precision and recall at 0.5 on its own pairs.

Where a calibration comes from, first found wins:

1. the collection's own (``vlmsearch eval retrieval --calibrate`` fits it on the user's
   captions), if it was fitted for the collection's current encoder;
2. the encoder's (``manifest["encoder"]["calibration"]``): the offline ASIF default
   ships one measured on held-out pairs (benchmarks/RESULTS.md, "Calibrated scores").

Without either, hits keep the raw score. With one, ``score`` is calibrated and
``raw_score`` keeps the raw similarity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from vlmsearch.models.encoders.base import Encoder
from vlmsearch.results import Hit

METHOD = "platt"
PRIOR = 0.01  # the share of matching pairs a calibration is fitted at (see above)
NEGATIVES_PER_QUERY = 256  # sampled non-matching images per caption when fitting


def encoder_key(spec: dict[str, Any]) -> str:
    """A digest of what makes an encoder's embeddings comparable (its identity)."""
    ident = Encoder.identity(spec or {})
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def active(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration that applies to text queries of this collection, or None."""
    encoder = manifest.get("encoder") or {}
    own = manifest.get("calibration")
    if own and own.get("encoder") == encoder_key(encoder):
        return own
    return encoder.get("calibration") or None


def apply(raw: np.ndarray | float, calibration: dict[str, Any]) -> np.ndarray:
    """Calibrated scores of raw similarities."""
    if calibration.get("method") != METHOD:
        raise ValueError(f"unknown calibration method {calibration.get('method')!r}")
    z = float(calibration["a"]) * np.asarray(raw, np.float64) + float(calibration["b"])
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow


def calibrate_hits(hits: list[Hit], calibration: dict[str, Any] | None) -> list[Hit]:
    """Hits with calibrated ``score`` and the raw one kept as ``raw_score``."""
    if calibration is None or not hits:
        return hits
    probs = apply(np.array([h.score for h in hits]), calibration)
    return [
        dataclasses.replace(h, score=float(p), extra={**h.extra, "raw_score": h.score})
        for h, p in zip(hits, probs, strict=True)
    ]


def fit_platt(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """(a, b) of the logistic fit of ``labels`` (0/1) on ``scores`` by Newton's method,
    matching pairs given the share ``PRIOR`` of the total weight (``weights`` set the
    weight within each side; a tiny ridge keeps separable data finite)."""
    x = np.asarray(scores, np.float64)
    y = np.asarray(labels, np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64)
    if y.min() == y.max():
        raise ValueError("calibration needs both matching and non-matching pairs")
    w = at_prior(w, y > 0.5) * len(x)
    design = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.zeros(2)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ theta)))
        grad = design.T @ (w * (p - y)) + 1e-6 * theta
        hess = (design * (w * p * (1 - p))[:, None]).T @ design + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def quality(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """How well calibrated probabilities match outcomes: expected calibration error over
    10 equal-width bins with matches weighted to ``PRIOR`` (as fitted),
    and precision/recall of the 0.5 cut-off among the pairs as they come (``weights``)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, bool)
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64)
    even = at_prior(w, y) if y.any() and (~y).any() else w
    ece = 0.0
    edges = np.linspace(0, 1, 11)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if m.any():
            gap = np.average(p[m], weights=even[m]) - np.average(y[m], weights=even[m])
            ece += even[m].sum() / even.sum() * abs(gap)
    kept = p >= 0.5
    tp = w[kept & y].sum()
    return {
        "ece": round(float(ece), 5),
        "precision_at_0.5": round(float(tp / w[kept].sum()), 4) if kept.any() else None,
        "recall_at_0.5": round(float(tp / w[y].sum()), 4) if y.any() else None,
    }


def at_prior(weights: np.ndarray, match: np.ndarray) -> np.ndarray:
    """Weights rescaled to sum to 1, the matching pairs' share being ``PRIOR``."""
    w = np.asarray(weights, np.float64)
    return np.where(match, PRIOR * w / w[match].sum(), (1 - PRIOR) * w / w[~match].sum())
