"""Fitting a collection's score calibration on a captions file (``eval retrieval
--calibrate``): each caption's own image is a match, every other image is not.

All matching pairs are used; non-matching ones are sampled (``NEGATIVES_PER_QUERY`` per
caption, weighted to stand for all of them), so memory stays small on large galleries.
The fit is checked on held-out captions (odd rows, fitted on even rows) and then refitted
on all of them; the check is reported with the stored calibration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmsearch.search import calibration
from vlmsearch.storage.layout import now_iso

SEED = 0


def calibration_pairs(
    table: Any, vecs: np.ndarray, answer: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(raw scores, labels, weights, caption number) of the sampled caption-image pairs."""
    rng = np.random.default_rng(SEED)
    n_images = len(table)
    pos = table.positions(answer)
    n_neg = min(calibration.NEGATIVES_PER_QUERY, n_images - 1)
    scores, labels, weights, owner = [], [], [], []
    # query rows repeated once per candidate: keep that under 2^24 floats at a time
    step = max(1, (1 << 24) // ((n_neg + 1) * max(1, vecs.shape[1])))
    for lo in range(0, len(vecs), step):
        q = vecs[lo : lo + step]
        p = pos[lo : lo + step]
        # random non-matching positions: draw from n_images - 1 and skip over the match
        draw = rng.integers(0, n_images - 1, size=(len(q), n_neg)) if n_neg else None
        cand = [p[:, None]]
        if draw is not None:
            cand.append(draw + (draw >= p[:, None]))
        cols = np.concatenate(cand, axis=1)
        images = table.get(table.ids[cols.ravel()])
        rows = np.repeat(np.arange(len(q)), cols.shape[1])
        if hasattr(images, "multiply"):  # sparse rows (ASIF)
            s = np.asarray(images.multiply(q[rows]).sum(axis=1)).ravel()
        else:
            s = np.einsum("ij,ij->i", np.asarray(images, np.float32), q[rows])
        s = s.reshape(len(q), -1)
        scores.append(s.ravel())
        lab = np.zeros_like(s, bool)
        lab[:, 0] = True
        labels.append(lab.ravel())
        w = np.full(s.shape, (n_images - 1) / max(n_neg, 1), np.float64)
        w[:, 0] = 1.0
        weights.append(w.ravel())
        owner.append(np.repeat(np.arange(lo, lo + len(q)), s.shape[1]))
    return (
        np.concatenate(scores),
        np.concatenate(labels),
        np.concatenate(weights),
        np.concatenate(owner),
    )


def fit_calibration(
    table: Any, vecs: np.ndarray, answer: np.ndarray, encoder: dict[str, Any], source: str
) -> dict[str, Any]:
    """A Platt calibration for this collection's encoder, with its held-out check."""
    if len(table) < 2:
        raise ValueError("calibration needs at least two indexed images")
    s, y, w, owner = calibration_pairs(table, vecs, answer)
    check: dict[str, Any] | None = None
    even, odd = owner % 2 == 0, owner % 2 == 1
    if len(vecs) >= 4:
        a, b = calibration.fit_platt(s[even], y[even], w[even])
        probs = calibration.apply(s[odd], {"method": calibration.METHOD, "a": a, "b": b})
        check = {"held_out_captions": int(len(np.unique(owner[odd])))}
        check.update(calibration.quality(probs, y[odd], w[odd]))
    a, b = calibration.fit_platt(s, y, w)
    return {
        "method": calibration.METHOD,
        "a": round(a, 6),
        "b": round(b, 6),
        "encoder": calibration.encoder_key(encoder),  # fitted for this encoder only
        "fitted_on": {"captions": source, "queries": int(len(vecs)), "pairs": int(len(s))},
        "held_out": check,
        "created_at": now_iso(),
    }
