#!/usr/bin/env python
"""Does region reranking find small objects? A check with real weights, offline.

Composites: each of N ImageNet-sample photos gets another class's photo pasted in, at a
third of its width, at a random place. The collection uses the offline ASIF default
(EfficientNet-Lite0 + MiniLM, real weights). For each composite, the query names the
*pasted* object ("a photo of a {label}."); we report where the composite ranks among all N
with the first stage alone and after ``--rerank region:teacher`` (all N reranked), plus
``whole_weight=0.5``. As a control, queries naming the *background* photo's class show
what reranking costs when the object fills the image.

With ``--student`` a region student (EfficientNet-Lite0 backbone, frozen) is distilled on
the composites and ranked the same way.

Run: ``python benchmarks/bench_region_quality.py [--n 40] [--student [--no-teacher]] [--out F]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imagenet-sample"


def label(path: Path) -> str:
    return path.stem.split("_", 1)[1].replace("_", " ")  # n01440764_tench -> tench


def composites(n: int, dest: Path, seed: int = 0) -> list[dict[str, Any]]:
    from PIL import Image

    files = sorted(SAMPLE.glob("*.JPEG"))
    rng = random.Random(seed)
    picked = rng.sample(files, 2 * n)
    dest.mkdir(parents=True)
    out = []
    for i in range(n):
        bg_path, obj_path = picked[i], picked[n + i]
        with Image.open(bg_path) as bg, Image.open(obj_path) as obj:
            bg, obj = bg.convert("RGB"), obj.convert("RGB")
            w = bg.width // 3
            obj = obj.resize((w, max(1, round(obj.height * w / obj.width))))
            x = rng.randint(0, bg.width - obj.width)
            y = rng.randint(0, max(0, bg.height - obj.height))
            bg.paste(obj, (x, y))
            name = f"c{i:03d}.jpg"
            bg.save(dest / name, quality=92)
        out.append({"file": name, "background": label(bg_path), "object": label(obj_path),
                    "box": [x, y, x + obj.width, y + obj.height]})  # fmt: skip
    return out


def ranks(coll: Any, items: list[dict[str, Any]], field: str, **search: Any) -> np.ndarray:
    by_file = {it["file"]: j for j, it in enumerate(items)}
    out = np.zeros(len(items), int)
    for j, it in enumerate(items):
        hits = coll.search(f"a photo of a {it[field]}.", k=len(items), **search)
        order = [by_file[Path(h.path).name] for h in hits]
        out[j] = order.index(j) + 1
    return out


def summary(r: np.ndarray) -> dict[str, float]:
    return {
        "R@1": round(float((r <= 1).mean()), 3),
        "R@5": round(float((r <= 5).mean()), 3),
        "mean_rank": round(float(r.mean()), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--out")
    ap.add_argument("--student", action="store_true", help="also distil and rank with a student")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--no-teacher", action="store_true", help="skip the teacher rows (deterministic, slow)"
    )
    args = ap.parse_args()
    if not SAMPLE.is_dir():
        raise SystemExit(f"needs {SAMPLE}")
    import torch

    from vlmsearch import Collection
    from vlmsearch.ingest.options import IngestOptions

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="bench-region-"))
    items = composites(args.n, work / "images")
    coll = Collection.index(
        work / "images", model="default", encoder_kind="asif", options=IngestOptions(workers=0)
    )
    res: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, cpu",
        "encoder": coll.manifest["encoder"].get("name"),
        "n": args.n,
        "results": {},
    }
    n = args.n
    t0 = time.perf_counter()
    rerank = {"rerank": "region:teacher", "rerank_top": n}
    plans = {
        "first stage": {},
        "region:teacher": rerank,
        "region:teacher, whole_weight=0.5": {**rerank, "rerank_options": {"whole_weight": 0.5}},
    }
    if args.no_teacher:
        plans = {"first stage": {}}
    if args.student:
        from vlmsearch.rerank.region.distill import distill

        # trained on the composites themselves, as `vlmsearch distill` would be on a collection
        _, report = distill(coll, "efficientnet-lite0", epochs=args.epochs, max_images=n)
        res["distill_report"] = report.to_dict()
        print("distill", json.dumps(report.to_dict()), flush=True)
        plans["region:student"] = {"rerank": "region:student", "rerank_top": n}
    for field in ("object", "background"):
        for name, search in plans.items():
            res["results"][f"{field} query, {name}"] = summary(ranks(coll, items, field, **search))
            print(f"{field:10s} {name:35s}", res["results"][f"{field} query, {name}"], flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
