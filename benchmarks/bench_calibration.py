#!/usr/bin/env python
"""Calibrated scores for the offline ASIF default (issue 20, part 2).

Fits ``vlmsearch.search.calibration.fit_platt`` (matching pairs weighted to the share
``calibration.PRIOR``) on the even-numbered queries of four query sets over the 1000
ImageNet-sample photos, and checks it on the odd-numbered ones:

- ``words``: the 60 everyday-word queries of ``data/asif-everyday-words.json`` (a match
  is any photo whose class lies under the expected WordNet synsets);
- ``hand``: the 300 hand-written captions of ``data/imagenet-sample-captions.csv``;
- ``names``: "a photo of a {class}." for the 1000 classes;
- ``gloss``: each class's WordNet gloss.

Every (query, photo) pair counts (1000 photos per query). Reported per set and pooled:
average precision of one ranking of all pairs by score (how well a single cut-off
serves every query; raw and calibrated scores give the same, as the map is monotone),
ECE at the prior, and precision/recall of the 0.5 cut-off. Also the raw-score variants
that were measured and rejected: each query's raw score divided by its largest
anchor weight ("peak") or by its best score over the classes' ideal images ("ceiling").

Run: ``python benchmarks/bench_calibration.py --out benchmarks/results-calibration-2026-12-03.json``
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
DATA = REPO / "benchmarks" / "data"
CACHE = REPO / "benchmarks" / ".cache"


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def image_features(img_enc: Any, files: list[Path]) -> np.ndarray:
    from vlmsearch.imaging.decode import DecodeTask, iter_decoded

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"feats-raw-{img_enc.name}-{len(files)}.npy"
    if path.is_file():
        return np.load(path)
    out = np.zeros((len(files), img_enc.dim), np.float32)
    tasks = [DecodeTask(i, str(f)) for i, f in enumerate(files)]
    for recs, pixels in iter_decoded(tasks, img_enc.image_transform(), 50, 2):
        out[[r.index for r in recs if r.error is None]] = img_enc.encode_pixels(
            pixels, normalize=False
        )
    np.save(path, out)
    return out


def query_sets(classes: list[str], class_names: list[str]) -> dict[str, list[tuple[str, set]]]:
    from vlmsearch.models.asif.hierarchy import wordnet_table

    synsets = wordnet_table()["synsets"]
    below: dict[str, set[int]] = {}
    for i, c in enumerate(classes):
        todo, seen = [c], set()
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                below.setdefault(s, set()).add(i)
                todo += synsets[s]["parents"]
    words = json.loads((DATA / "asif-everyday-words.json").read_text())["queries"]
    with open(DATA / "imagenet-sample-captions.csv", newline="") as f:
        hand = list(csv.DictReader(f))
    return {
        "words": [(q, set().union(*[below[i] for i in ids])) for q, ids in words],
        "hand": [(r["caption"], {classes.index(r["image"].split("_")[0])}) for r in hand],
        "names": [(f"a photo of a {n}.", {i}) for i, n in enumerate(class_names)],
        "gloss": [(synsets[c]["gloss"], {i}) for i, c in enumerate(classes)],
    }


def average_precision(score: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-score, kind="stable")
    hits = y[order]
    ranks = np.flatnonzero(hits) + 1
    return float((np.cumsum(hits)[hits] / ranks).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from vlmsearch.models.asif.encoder import AsifEncoder
    from vlmsearch.models.asif.relative import relative_from_dense
    from vlmsearch.search import calibration

    t0 = time.perf_counter()
    load0 = os.getloadavg()
    enc = AsifEncoder.from_name("default", device="cpu")
    files = sorted(p for p in SAMPLE.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    classes = [p.name.split("_")[0] for p in files]
    image_reps = enc.from_student_features(image_features(enc.image_encoder, files))
    sets = query_sets(classes, list(IMAGENET_CLASSNAMES))
    # the classes' ideal images (all probability on one class), for the "ceiling" variant
    block = enc.anchors.blocks[0]
    eye = np.eye(1000)
    g = block.entry["image"]["groups"]
    pooled = (eye ** g["pool"] @ block.group_matrix()) ** (1 / g["pool"])
    ideal = relative_from_dense(np.hstack([eye, g["weight"] * pooled]), enc.k, enc.p_image)

    data: dict[str, dict[str, np.ndarray]] = {}
    for name, items in sets.items():
        text_reps = enc.encode_texts([t for t, _ in items])
        raw = text_reps @ image_reps.T
        y = np.zeros_like(raw, bool)
        for j, (_, pos) in enumerate(items):
            y[j, sorted(pos)] = True
        peak = text_reps.max(axis=1, keepdims=True)
        ceiling = (text_reps @ ideal.T).max(axis=1, keepdims=True)
        data[name] = {
            "raw": raw,
            "peak": raw / np.maximum(peak, 1e-9),
            "ceiling": raw / np.maximum(ceiling, 1e-9),
            "y": y,
        }
    results: dict[str, Any] = {}
    for variant in ("raw", "peak", "ceiling"):
        train_x = np.concatenate([d[variant][0::2].ravel() for d in data.values()])
        train_y = np.concatenate([d["y"][0::2].ravel() for d in data.values()])
        a, b = calibration.fit_platt(train_x, train_y)
        cal = {"method": calibration.METHOD, "a": a, "b": b}
        rows: dict[str, Any] = {}
        xs, ys = [], []
        for name, d in data.items():
            x, y = d[variant][1::2].ravel(), d["y"][1::2].ravel()
            xs.append(x)
            ys.append(y)
            probs = calibration.apply(x, cal)
            rows[name] = {
                "pooled_ap": round(average_precision(x, y), 4),
                **calibration.quality(probs, y),
                "median_match_score": round(float(np.median(probs[y])), 4),
            }
        x, y = np.concatenate(xs), np.concatenate(ys)
        rows["all"] = {
            "pooled_ap": round(average_precision(x, y), 4),
            **calibration.quality(calibration.apply(x, cal), y),
        }
        results[variant] = {"a": round(a, 4), "b": round(b, 4), "held_out": rows}
        log(f"{variant}: a={a:.3f} b={b:.3f}")
        for name, r in rows.items():
            log(f"  {name:6s} {r}")
    out = {
        "benchmark": "calibration",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_before": load0,
        "load_after": os.getloadavg(),
        "encoder": enc.spec["name"],
        "queries": {k: len(v) for k, v in sets.items()},
        "gallery": len(files),
        "shipped": "raw",
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(results["raw"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
