#!/usr/bin/env python
"""Reduced precision on the CPU (issue 21): drift, speed and retrieval recall.

``vlmsearch index --precision bf16|int8`` runs the exported image tower on OpenVINO in bf16
or on onnxruntime with dynamically quantised int8 weights. This script measures, on the
ImageNet sample (1,000 photos):

1. **Drift** of the tower's features against fp32 (onnxruntime), min and mean cosine over
   all images, and each precision's model-only images/s on ready pixels (batch 64, this
   CPU's threads), for two towers: ViT-B-32 (random init, as bench_embed.py: the released
   model's compute, not its weights) and EfficientNet-Lite0 (the real ImageNet weights,
   the image side of the offline ASIF default).
2. **Retrieval** through the product, with the offline ASIF default (EfficientNet-Lite0 +
   MiniLM, prototype anchors): the 1,000 photos indexed once per precision with
   ``vlmsearch index --model asif --precision P``, then ``vlmsearch eval retrieval`` on the
   300 hand-written captions of ``benchmarks/data/imagenet-sample-captions.csv``
   (text->image R@1/5/10), the whole-command time of each index run, and the cosine of
   the stored vectors to the fp32 collection's.

    python benchmarks/bench_precision.py ../shared/data/imagenet-sample \\
        --json benchmarks/results-precision-2026-12-03.json
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_embed import ARCH, Phase, machine, random_checkpoint  # noqa: E402

PRECISIONS = ("fp32", "bf16", "int8")
CAPTIONS = HERE / "data" / "imagenet-sample-captions.csv"


def cli(*args: str) -> dict[str, Any]:
    """A vlmsearch command's JSON and timing; ``refused``: its one-line error instead."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with Phase() as ph:
        out = subprocess.run(
            [sys.executable, "-m", "vlmsearch", *args], env=env, capture_output=True, text=True
        )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"refused": lines[-1] if lines else f"exit {out.returncode}"}
    return {"json": json.loads(out.stdout), "phase": ph.to_json()}


def tower_drift(spec: dict[str, Any], images: list[Path], batch: int) -> dict[str, Any]:
    """Features of ``images`` at each precision against fp32; images/s on ready pixels."""
    from PIL import Image, ImageOps

    from vlmsearch.models.onnx import engines, image_tower, quantize

    folder = image_tower.export_dir(spec)
    base = image_tower.OnnxImageTower(folder)
    pixels = np.stack(
        [base.preprocess(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) for p in images]
    )
    out: dict[str, Any] = {"images": len(images)}
    try:
        image_tower.ensure_precision(spec, "int8")
        int8_model = None
    except quantize.QuantizeError as e:  # refused by vlmsearch: measured on a copy here
        out["int8_refused"] = str(e)
        int8_model = quantized_copy(folder)
    feats: dict[str, np.ndarray] = {}
    for precision in PRECISIONS:
        engine = engines.OPENVINO if precision == "bf16" else engines.ONNXRUNTIME
        if precision == "bf16" and not engines.cpu_has_bf16():
            continue
        if precision == "int8" and int8_model is not None:
            tower = image_tower.OnnxImageTower(folder)
            tower._runner = engines.load_runner(int8_model, engines.ONNXRUNTIME, "fp32")
        else:
            tower = image_tower.OnnxImageTower(folder, engine, precision)
        tower.run(pixels[:batch])  # warm-up
        t0 = time.perf_counter()
        feats[precision] = np.concatenate(
            [tower.run(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
        )
        rate = len(pixels) / (time.perf_counter() - t0)
        out[precision] = {"engine": engine, "images_per_s": round(rate, 2)}
    ref = feats["fp32"] / np.linalg.norm(feats["fp32"], axis=1, keepdims=True)
    for precision, f in feats.items():
        cos = (ref * (f / np.linalg.norm(f, axis=1, keepdims=True))).sum(1)
        out[precision] |= {
            "min_cosine": round(float(cos.min()), 6),
            "mean_cosine": round(float(cos.mean()), 6),
        }
    meta = json.loads((folder / "meta.json").read_text())
    out["int8_check"] = meta.get("int8")
    return out


def quantized_copy(folder: Path) -> Path:
    """The int8 model vlmsearch refused for this tower, made again in a scratch folder."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    dest = Path(tempfile.mkdtemp(prefix="int8-")) / "model-int8.onnx"
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(folder / "model.onnx"), str(dest), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return dest


def stored_cosines(a: Path, b: Path) -> dict[str, float]:
    from vlmsearch import Collection

    ca, cb = Collection.open(a), Collection.open(b)

    def by_path(c: Collection) -> dict[str, np.ndarray]:
        rows = c.vectors.get(c.vectors.ids)
        dense = np.asarray(rows.toarray() if hasattr(rows, "toarray") else rows, np.float32)
        paths = dict(zip(c.table["id"].to_pylist(), c.table["path"].to_pylist(), strict=True))
        return {paths[i]: v for i, v in zip(c.vectors.ids.tolist(), dense, strict=True)}

    va, vb = by_path(ca), by_path(cb)
    cos = np.array(
        [va[p] @ vb[p] / (np.linalg.norm(va[p]) * np.linalg.norm(vb[p]) + 1e-12) for p in va]
    )
    return {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from vlmsearch.models.encoders import load_encoder

    src = args.folder.expanduser().resolve()
    images = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": machine(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    try:
        photos = tmp / "photos"
        photos.mkdir()
        for p in images:
            shutil.copyfile(p, photos / p.name)
        captions = tmp / "captions.csv"
        with open(CAPTIONS) as f, open(captions, "w", newline="") as g:
            w = csv.writer(g)
            w.writerow(["path", "caption"])
            for row in csv.DictReader(f):
                w.writerow([row["image"], row["caption"]])
        retrieval: dict[str, Any] = {}
        for precision in PRECISIONS:
            coll = tmp / f"coll-{precision}"
            idx = cli("index", str(photos), "-c", str(coll), "--model", "asif", "--device",
                      "cpu", "--precision", precision, "--json")  # fmt: skip
            if "refused" in idx:
                retrieval[precision] = {"refused": idx["refused"]}
                print(precision, idx["refused"], flush=True)
                continue
            ev = cli("eval", "retrieval", "-c", str(coll), "--captions", str(captions), "--json")
            manifest = json.loads((coll / "manifest.json").read_text())
            retrieval[precision] = {
                "index_wall_s": idx["phase"]["wall_s"],
                "index_other_processes_cores": idx["phase"]["other_processes_cores"],
                "engine": manifest["ingest"]["executor"],
                "eval": ev["json"],
            }
            if precision != "fp32":
                retrieval[precision]["stored_cosine_to_fp32"] = stored_cosines(
                    tmp / "coll-fp32", coll
                )
            print(precision, json.dumps(retrieval[precision])[:400], flush=True)
        result["asif_retrieval"] = retrieval
        asif_spec = json.loads((tmp / "coll-fp32" / "manifest.json").read_text())["encoder"]
        result["drift"] = {
            "efficientnet-lite0": tower_drift(asif_spec["image_encoder"], images, args.batch)
        }
        print("lite0", json.dumps(result["drift"]["efficientnet-lite0"])[:400], flush=True)
        vit = load_encoder(f"{ARCH}:{random_checkpoint()}", device="cpu")
        hook = vit.onnx_image_export()
        from vlmsearch.models.onnx import image_tower

        if not image_tower.export_ready(vit.spec) and hook:
            image_tower.prepare_image_queries(*hook)
        del vit
        result["drift"]["vit-b-32-random-init"] = tower_drift(hook[0], images, args.batch)
        print("vit", json.dumps(result["drift"]["vit-b-32-random-init"])[:400], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print("wrote", args.json)


if __name__ == "__main__":
    main()
