#!/usr/bin/env python
"""GPU embedding throughput (issue 6, target 6): nvJPEG end to end, model-only, FLOP/s.

Figures, each printed and written as JSON to ``--out``:

1. **ViT-B-32, fp16 autocast, end to end on real JPEGs**: the folder's file list repeated
   ``--repeat`` times, read/hashed/header-parsed by CPU threads into pinned memory,
   decoded in batches by nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``) on a
   side stream, resized/cropped/normalised on the GPU, encoded by vlmsearch's
   ``OpenClipEncoder.encode_pixels`` (embeddings copied back to the host per batch, as
   indexing does). Images/s, plus the decode pipeline alone (no model) to show which side
   bounds it. Target: >= 4000 images/s on an H100.
2. **Model-only** ViT-B-32 throughput on ready tensors (same batch size, same path).
3. **Drift**: cosine of the end-to-end embeddings to open_clip's reference preprocessing
   (Pillow, ``create_model_and_transforms``'s preprocess) run through the same fp16
   model, and to the reference in fp32 (decode and precision drift separately).
4. **ViT-L-14 bf16 model-only**: images/s and achieved FLOP/s as a fraction of the
   H100 SXM's dense bf16 peak (989 TFLOP/s) and of the ~790 TFLOP/s measured on this
   project's machines, for bf16 autocast and for bf16 weights (and torch.compile with
   ``--compile``). Target: >= 40 % of peak. A large bf16 matmul is timed too, as this
   GPU's practical ceiling.

Models are random-initialised in memory (seeded): nothing is downloaded. Runs on the CPU
as well (``--device cpu --quick``: tiny sizes, for testing the script).

Needs torch, torchvision, Pillow, numpy and open_clip (open_clip_torch with its
ftfy/regex/wcwidth dependencies); from vlmsearch only ``vlmsearch.imaging.gpu_decode``,
``vlmsearch.imaging.decode`` and ``vlmsearch.models.encoders.openclip``, which need
nothing else.

    python benchmarks/bench_embed_gpu.py --folder shared/data/imagenet-sample \\
        --out /tmp/gpu.json --repeat 8 --profile
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# Compute per image of the image towers, from the project notes
# (/work/shared/notes/faiss-and-performance.md, "Compute per image").
GFLOPS_PER_IMAGE = {"ViT-B-32": 8.8, "ViT-L-14": 162.0}
# NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16 tensor-core peak (1979 with
# sparsity); ~790 TFLOP/s is what the project notes record as measured on its H100/H200s.
H100_BF16_PEAK = 989e12
H100_BF16_MEASURED = 790e12


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_encoder(arch: str, device: str, precision: str) -> Any:
    """A seeded random-init open_clip model in memory, wrapped as vlmsearch's encoder."""
    import open_clip
    import torch

    from vlmsearch.models.encoders.openclip import OpenClipEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
    model.eval()
    cfg = dict(model.visual.preprocess_cfg)
    spec = {
        "kind": "open_clip",
        "arch": arch,
        "name": f"{arch} (random init)",
        "dim": int(model.visual.output_dim),
        "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }
    return OpenClipEncoder(model, preprocess, None, spec, device, precision)


def folder_tasks(folder: Path, repeat: int, limit: int | None) -> list[Any]:
    from vlmsearch.imaging.decode import DecodeTask

    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    names = names[:limit] if limit else names
    paths = [str(folder / n) for n in names] * repeat
    return [DecodeTask(i, p) for i, p in enumerate(paths)]


def time_model(fn: Any, x: Any, device: str, warmup: int, iters: int) -> dict[str, Any]:
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(x)
        sync(device)
    secs = time.perf_counter() - t0
    n = iters * x.shape[0]
    return {"images": n, "seconds": round(secs, 4), "images_per_s": round(n / secs, 1)}


def end_to_end(enc: Any, tasks: list[Any], batch: int, threads: int, model: bool) -> dict:
    """Images/s through the nvJPEG pipeline (and the encoder when ``model``)."""
    from vlmsearch.imaging.gpu_decode import TensorImagePipeline

    pp = enc.tensor_preprocess()
    pipe = TensorImagePipeline(tasks, pp, batch, enc.device, read_threads=threads)
    n = errors = 0
    sync(enc.device)
    t0 = time.perf_counter()
    for records, pixels in pipe:
        errors += sum(r.error is not None for r in records)
        if pixels is None:
            continue
        n += pixels.shape[0]
        if model:
            enc.encode_pixels(pixels)  # returns host numpy: one sync per batch, as indexing
    sync(enc.device)
    secs = time.perf_counter() - t0
    return {
        "images": n,
        "errors": errors,
        "seconds": round(secs, 3),
        "images_per_s": round(n / secs, 1),
        "decoders": dict(pipe.stats),
    }


def drift(enc_fast: Any, enc_fp32: Any, tasks: list[Any], batch: int) -> dict[str, Any]:
    """Pipeline embeddings (fp16 model) vs open_clip's Pillow preprocessing."""
    import torch
    from PIL import Image

    from vlmsearch.imaging.gpu_decode import TensorImagePipeline

    pipe = TensorImagePipeline(tasks, enc_fast.tensor_preprocess(), batch, enc_fast.device)
    got = np.concatenate([enc_fast.encode_pixels(p) for _, p in pipe if p is not None])
    pre = enc_fast.image_transform()
    ref_px = torch.stack([pre(Image.open(t.path)) for t in tasks])
    ref16 = np.concatenate(
        [enc_fast.encode_pixels(ref_px[i : i + batch]) for i in range(0, len(tasks), batch)]
    )
    ref32 = np.concatenate(
        [enc_fp32.encode_pixels(ref_px[i : i + batch]) for i in range(0, len(tasks), batch)]
    )

    def cos(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        return {"mean": round(float(c.mean()), 6), "min": round(float(c.min()), 6)}

    return {
        "n": len(tasks),
        "pipeline_fp16_vs_reference_fp16": cos(got, ref16),
        "pipeline_fp16_vs_reference_fp32": cos(got, ref32),
        "reference_fp16_vs_reference_fp32": cos(ref16, ref32),
    }


def matmul_ceiling(device: str, n: int, iters: int) -> dict[str, Any]:
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    secs = time.perf_counter() - t0
    flops = 2 * n**3 * iters / secs
    return {
        "n": n,
        "tflops": round(flops / 1e12, 1),
        "fraction_of_peak": round(flops / H100_BF16_PEAK, 3),
    }


def vit_l(device: str, batch: int, warmup: int, iters: int, compile_: bool) -> dict[str, Any]:
    import torch

    enc = make_encoder("ViT-L-14", device, "bf16")
    x = torch.randn(batch, 3, 224, 224, device=device)
    out: dict[str, Any] = {"batch": batch}

    def add(name: str, r: dict[str, Any]) -> None:
        flops = r["images_per_s"] * GFLOPS_PER_IMAGE["ViT-L-14"] * 1e9
        r["achieved_tflops"] = round(flops / 1e12, 1)
        r["fraction_of_989_peak"] = round(flops / H100_BF16_PEAK, 3)
        r["fraction_of_790_measured"] = round(flops / H100_BF16_MEASURED, 3)
        out[name] = r
        print(f"ViT-L-14 {name}: {r['images_per_s']} img/s, {r['achieved_tflops']} TFLOP/s, "
              f"{r['fraction_of_989_peak']:.1%} of peak", flush=True)  # fmt: skip

    # vlmsearch's path: fp32 weights under bf16 autocast, normalised output
    add("autocast_bf16", time_model(enc.encode_pixels, x, device, warmup, iters))
    model = enc.model.visual.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    add("bf16_weights", time_model(model, xb, device, warmup, iters))
    if compile_:
        compiled = torch.compile(model, mode="default")
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(xb)
        sync(device)
        out["compile_seconds"] = round(time.perf_counter() - t0, 1)
        add("bf16_weights_compiled", time_model(compiled, xb, device, warmup, iters))
    return out


def profile_e2e(enc: Any, tasks: list[Any], batch: int, threads: int) -> str:
    """torch profiler over a short end-to-end run: top operators by device and CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if enc.device.startswith("cuda") else []
    )
    with profile(activities=acts) as prof:
        end_to_end(enc, tasks, batch, threads, model=True)
    key = "cuda_time_total" if enc.device.startswith("cuda") else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=20)
    del torch
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=None, help="JPEG folder (imagenet-sample)")
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--repeat", type=int, default=8, help="times the file list is repeated")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--read-threads", type=int, default=min(16, os.cpu_count() or 4))
    ap.add_argument("--vitl-batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20, help="timed model-only iterations")
    ap.add_argument("--drift-n", type=int, default=256, help="images for the drift check")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile ViT-L-14")
    ap.add_argument("--profile", action="store_true", help="torch profiler table of e2e")
    args = ap.parse_args()

    import torch
    import torchvision

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch; use --device cpu --quick to test")
    folder = args.folder
    if folder is None:
        for cand in ("shared/data/imagenet-sample", "../shared/data/imagenet-sample"):
            if Path(cand).is_dir():
                folder = Path(cand)
                break
        else:
            raise SystemExit("pass --folder (a folder of JPEGs, e.g. imagenet-sample)")
    limit = None
    if args.quick:
        limit, args.repeat, args.batch_size, args.vitl_batch = 24, 1, 8, 2
        args.iters, args.drift_n = 2, 8
    warmup = 1 if args.quick else 5
    dev = args.device
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "argv": sys.argv,
        "machine": {
            "device": torch.cuda.get_device_name()
            if dev.startswith("cuda")
            else platform.processor(),
            "cpu_cores": os.cpu_count(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "batch_size": args.batch_size,
            "repeat": args.repeat,
            "folder": str(folder),
            "read_threads": args.read_threads,
            "quick": args.quick,
        },  # fmt: skip
    }
    # TF32 stays off: the fp32 reference of the drift check must be real fp32.
    tasks = folder_tasks(folder, args.repeat, limit)
    enc = make_encoder("ViT-B-32", dev, "fp16")

    # warm-up: nvJPEG handles, cuDNN/cuBLAS heuristics, the pinned-memory pool
    end_to_end(enc, tasks[: 2 * args.batch_size], args.batch_size, args.read_threads, True)
    x = torch.randn(args.batch_size, 3, 224, 224, device=dev)
    result["vit_b_32_model_only_fp16"] = time_model(enc.encode_pixels, x, dev, warmup, args.iters)
    print("ViT-B-32 model-only", result["vit_b_32_model_only_fp16"]["images_per_s"], flush=True)
    result["decode_pipeline_only"] = end_to_end(
        enc, tasks, args.batch_size, args.read_threads, False
    )
    print("decode pipeline only", result["decode_pipeline_only"]["images_per_s"], flush=True)
    e2e = end_to_end(enc, tasks, args.batch_size, args.read_threads, True)
    result["vit_b_32_end_to_end_fp16"] = e2e
    e2e["target_images_per_s"] = 4000
    e2e["fraction_of_model_only"] = round(
        e2e["images_per_s"] / result["vit_b_32_model_only_fp16"]["images_per_s"], 3
    )
    print("ViT-B-32 end to end", e2e["images_per_s"], "img/s", e2e["decoders"], flush=True)
    enc32 = make_encoder("ViT-B-32", dev, "fp32")
    result["drift"] = drift(enc, enc32, tasks[: args.drift_n], args.batch_size)
    print("drift", result["drift"], flush=True)
    if args.profile:
        n = min(len(tasks), 8 * args.batch_size)
        result["profile_e2e"] = profile_e2e(enc, tasks[:n], args.batch_size, args.read_threads)
        print(result["profile_e2e"], flush=True)
    del enc, enc32
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
        result["bf16_matmul"] = matmul_ceiling(dev, 8192, 20)
        print("bf16 matmul 8192^3:", result["bf16_matmul"], flush=True)
    result["vit_l_14_bf16"] = vit_l(dev, args.vitl_batch, warmup, args.iters, args.compile)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
