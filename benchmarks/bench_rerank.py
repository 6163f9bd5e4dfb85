#!/usr/bin/env python
"""Rerank latency per candidate for each reranker, and the region student's speed-up.

Models have random weights (latency does not depend on them), at two sizes:
- ``tiny``: the test models (vlms-tiny, vlms-tiny-coca, vlmsearch.testing's tiny builds);
- ``base``: realistic sizes: ViT-B-32 as the collection encoder (region teacher),
  coca_ViT-B-32, ViLT/BLIP/FLAVA at BERT-base / ViT-B sizes, and a LLaVA-style VLM with a
  ViT-B/32 vision tower and a SmolLM-135M-sized Llama.
Candidates are real JPEGs from ../shared/data/imagenet-sample when present (else the
bundled sample photos). The region student is trained with ``vlmsearch distill``'s code on
the same images (EfficientNet-Lite0 backbone, frozen, when the offline extra is installed).

Run: ``python benchmarks/bench_rerank.py [--sizes tiny,base] [--candidates 8] [--out F]``;
on a GPU: ``--device cuda --candidates 32 --warmup 32 --images DIR``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent.parent / "shared" / "data" / "imagenet-sample"


def images(n: int, dest: Path, src: Path | None = None) -> Path:
    from vlmsearch.samples import sample_dir

    src = src or (SAMPLE if SAMPLE.is_dir() else sample_dir())
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    dest.mkdir(parents=True)
    for p in files:
        shutil.copy(p, dest / p.name)
    return dest


def time_reranker(reranker: Any, query: Any, cands: list[Any], warmup: int = 1) -> dict[str, float]:
    """Warm up on the first ``warmup`` candidates (allocations, kernels; on a GPU as many as
    are timed, so the batch shapes match), time the others: different images, so that the
    region reranker's per-process embedding cache cannot help."""
    warm, timed = cands[:warmup], cands[warmup:]
    reranker.score(query, warm)
    t0 = time.perf_counter()
    reranker.score(query, timed)
    total = time.perf_counter() - t0
    return {"ms_per_candidate": round(1000 * total / len(timed), 2), "candidates": len(timed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="tiny,base")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=1, help="candidates scored before timing")
    ap.add_argument("--images", type=Path, help="a folder of images (default: ImageNet sample)")
    ap.add_argument("--out")
    args = ap.parse_args()

    import torch

    from vlmsearch import Collection
    from vlmsearch.ingest.options import IngestOptions
    from vlmsearch.rerank import load_reranker
    from vlmsearch.rerank.base import Candidate, RerankQuery
    from vlmsearch.rerank.region.distill import distill
    from vlmsearch.testing import build_itm, build_llava

    os.environ.setdefault("VLMSEARCH_MODEL_CONFIGS", str(HERE.parent / "tests" / "model_configs"))
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    root = images(max(args.candidates + args.warmup, 12), work / "images", args.images)
    res: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.device}",
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "warmup_candidates": args.warmup,
        "images": str(args.images or (SAMPLE if SAMPLE.is_dir() else "bundled samples")),
        "runs": [],
    }

    def record(size: str, name: str, figures: dict[str, Any]) -> None:
        row = {"size": size, "reranker": name, **figures}
        res["runs"].append(row)
        print(json.dumps(row), flush=True)

    text = "a red car parked on the street"
    for size in args.sizes.split(","):
        encoder = "vlms-tiny" if size == "tiny" else "ViT-B-32"
        coll = Collection.index(
            root,
            collection=work / f"coll-{size}",
            model=encoder,
            options=IngestOptions(workers=0),
            device=args.device,
        )
        rows = coll.table.to_pylist()
        rows = rows[: args.candidates + args.warmup]
        cands = [Candidate(r["id"], str(root / r["path"]), 0.0) for r in rows]
        q = RerankQuery(text, coll.encoder.encode_texts([text])[0], coll)
        teacher = load_reranker("region:teacher", device=args.device)
        t = time_reranker(teacher, q, cands, args.warmup)
        record(size, f"region teacher ({encoder}, 46 regions x 2 crops)", t)
        backbones = ["tiny"]
        try:
            import efficientnet_lite_pytorch  # noqa: F401

            backbones.append("efficientnet-lite0")
        except ImportError:
            pass
        for backbone in backbones:
            _, report = distill(
                coll, backbone, epochs=3, max_images=12, device=args.device, save=True
            )
            student = load_reranker("region:student", device=args.device)
            s = time_reranker(student, q, cands, args.warmup)
            record(
                size,
                f"region student ({backbone} backbone)",
                {
                    **s,
                    "speedup_vs_teacher": round(t["ms_per_candidate"] / s["ms_per_candidate"], 2),
                    "distill_report": report.to_dict(),
                },
            )
        coca = "coca:vlms-tiny-coca" if size == "tiny" else "coca:coca_ViT-B-32"
        record(
            size,
            coca,
            time_reranker(load_reranker(coca, device=args.device), q, cands, args.warmup),
        )
        models = work / f"hf-{size}"
        torch.manual_seed(0)
        vqa = build_llava(models / "llava", size)
        record(
            size,
            "vqa (LLaVA-style)",
            time_reranker(load_reranker(f"vqa:{vqa}", device=args.device), q, cands, args.warmup),
        )
        for family in ("vilt", "blip", "flava"):
            path = build_itm(models / family, family, size)
            record(
                size,
                f"itm:{family}",
                time_reranker(
                    load_reranker(f"itm:{path}", device=args.device), q, cands, args.warmup
                ),
            )
    shutil.rmtree(work, ignore_errors=True)
    out = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(out)
    print(out)


if __name__ == "__main__":
    main()
