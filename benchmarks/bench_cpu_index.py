#!/usr/bin/env python
"""CPU indexing against clip-retrieval and against the model alone (issue 21, target 1).

Side by side in one run, each tool as its own fresh process on the same JPEG folder with
the same ViT-B-32 checkpoint (random initialisation saved to disk: the released model's
compute), batch size and decoding workers:

1. **Model-only ceilings**, exact fp32 on ready pixels, this CPU's threads: torch
   (``encode_pixels``), and the cached ONNX export on onnxruntime and on OpenVINO
   (``INFERENCE_PRECISION_HINT=f32``; throughput mode as vlmsearch runs it, and latency
   mode, one request on all threads). The best of them is "the best exact model-only
   throughput on this CPU"; measured before and after the pairs.
2. **Pairs**, alternating (vlmsearch first in odd pairs, clip-retrieval first in even
   ones), ``--pairs`` of them: each tool's images/s over the whole command (process
   start, imports, model load, decode, encode, write), its peak memory from /proc (the
   main process's VmHWM, read every second until it exits; the PSS of its whole process
   tree, decoding workers included so that pages they share count once, sampled every
   second), and the CPU time other processes took meanwhile. vlmsearch makes a new
   collection each time, as clip-retrieval makes a new output folder; the model's export
   and spec are cached by a warm-up run first, in an empty cache of the benchmark's own
   (that first-ever run's cost, export and engine timing included, is reported alone).
3. ``--torch-too``: the same vlmsearch command with ``VLMSEARCH_IMAGE_ONNX=0`` (today's
   torch path), for its peak RSS and speed.
4. The cosine of vlmsearch's stored vectors (and clip-retrieval's) to open_clip's own
   reference (``create_model_and_transforms``'s preprocess, EXIF-transposed image).

Medians over the pairs are the figures of record. clip-retrieval runs from its own venv
(``benchmarks/clip_retrieval_env.sh``).

    python benchmarks/bench_cpu_index.py ../shared/data/imagenet-sample --limit 200 \\
        --pairs 3 --torch-too --json benchmarks/results-cpu-index-200-DATE.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_embed import (  # noqa: E402
    ARCH,
    CLIP_VENV,
    Phase,
    clip_retrieval_command,
    clip_retrieval_cosines,
    machine,
    random_checkpoint,
    reference_cosines,
)


def copied_folder(src: Path, limit: int | None, tmp: Path) -> Path:
    """The first ``limit`` JPEGs of ``src`` (sorted), copied: the scanner does not follow
    links out of the indexed folder."""
    out = tmp / "images"
    out.mkdir(parents=True)
    names = sorted(p.name for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    for name in names[:limit] if limit else names:
        shutil.copyfile(src / name, out / name)
    return out


def _tree_pss(pid: int) -> int:
    """PSS of ``pid`` and its descendants in bytes, from /proc. PSS splits pages shared
    between processes (forked decoding workers share the parent's model pages) among
    them, so the sum is the tree's real footprint. Reading smaps_rollup walks the page
    tables, so it is sampled once a second (every 50 ms took most of a core)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def _peak_rss(pid: int) -> int:
    """The main process's own peak RSS so far (VmHWM, kept by the kernel)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; wall time, other processes' CPU and the sampled peak RSS of its
    process tree."""
    peak = [0, 0]
    with Phase() as ph:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(1.0):
                peak[0] = max(peak[0], _tree_pss(proc.pid))
                peak[1] = max(peak[1], _peak_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = proc.communicate()
        done.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{err.decode()[-3000:]}")
    return {
        "stdout": out.decode(),
        "phase": ph.to_json(),
        "peak_pss_tree_mb": round(peak[0] / 2**20, 1),
        "peak_rss_main_mb": round(peak[1] / 2**20, 1),
    }


def run_vlmsearch(
    folder: Path, ckpt: Path, coll: Path, args: argparse.Namespace, env_extra: dict[str, str]
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "vlmsearch", "index", str(folder), "--collection", str(coll),
        "--model", f"{ARCH}:{ckpt}", "--batch-size", str(args.batch_size),
        "--workers", str(args.workers), "--device", "cpu", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    r = run_measured(cmd, env)
    rep = json.loads(r.pop("stdout"))
    n = int(rep["encoded"])
    manifest = json.loads((coll / "manifest.json").read_text())
    return {
        "command": " ".join(cmd),
        "env": env_extra,
        "images": n,
        "errors": rep["errors"],
        "engine": manifest.get("ingest", {}).get("executor", {}),
        **r,
        "images_per_s_command": round(n / r["phase"]["wall_s"], 3),
        "encode_loop_s": round(rep["encode_seconds"], 3),
        "load_s": round(rep.get("load_seconds", 0.0), 3),
        "run_s": round(rep["seconds"], 3),
    }


def run_clip_retrieval(
    folder: Path, ckpt: Path, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """clip-retrieval's ``inference`` as bench_embed.py runs it, measured as above."""
    cmd, env = clip_retrieval_command(folder, ckpt, out, args)
    r = run_measured(cmd, env)
    r.pop("stdout")
    n = sum(
        int(json.loads(f.read_text()).get("sample_count", 0))
        for f in sorted((out / "stats").glob("*.json"))
    )
    return {
        "command": " ".join(cmd),
        "images": n,
        **r,
        "images_per_s_command": round(n / r["phase"]["wall_s"], 3),
    }


def model_only(ckpt: Path, batch: int, batches: int) -> dict[str, Any]:
    """Exact fp32 images/s on ready random pixels: torch, onnxruntime, OpenVINO."""
    import torch

    from vlmsearch.models.encoders import load_encoder
    from vlmsearch.models.onnx import engines, image_tower

    enc = load_encoder(f"{ARCH}:{ckpt}", device="cpu")
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    px = x.numpy()
    out: dict[str, Any] = {"batch": batch, "batches": batches, "threads": torch.get_num_threads()}

    def timed(run: Any) -> float:
        run()
        t0 = time.perf_counter()
        for _ in range(batches):
            run()
        return round(batch * batches / (time.perf_counter() - t0), 3)

    out["torch"] = timed(lambda: enc.encode_pixels(x))
    folder = image_tower.export_dir(enc.spec)
    for engine in engines.ENGINES:
        if engine == engines.OPENVINO and not engines.openvino_available():
            continue
        runner = engines.load_runner(folder / "model.onnx", engine, "fp32").result()
        out[engine] = timed(lambda r=runner: r.run(px))
        del runner
    if engines.openvino_available():  # one 2-thread request at a time, for comparison
        import openvino as ov

        compiled = ov.Core().compile_model(
            str(folder / "model.onnx"),
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
        )
        request = compiled.create_infer_request()
        out["openvino_latency_mode"] = timed(lambda: request.infer({0: px}))
        del request, compiled
    rates = {k: out[k] for k in ("torch", *engines.ENGINES, "openvino_latency_mode") if k in out}
    out["best"] = max(rates.values())
    out["best_engine"] = max(rates, key=lambda k: rates[k])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model-batches", type=int, default=3)
    ap.add_argument("--torch-too", action="store_true", help="also time the torch path")
    ap.add_argument("--skip-clip-retrieval", action="store_true")
    ap.add_argument("--clip-venv", default=str(CLIP_VENV))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-index-"))
    # a cache of its own, so the warm-up is a first-ever run (exports, timing, spec)
    os.environ["XDG_CACHE_HOME"] = str(tmp / "xdg-cache")
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": machine(),
        "settings": vars(args) | {"folder": str(args.folder), "json": str(args.json)},
    }
    try:
        import onnxruntime
        import openvino

        result["machine"]["onnxruntime"] = onnxruntime.__version__
        result["machine"]["openvino"] = openvino.__version__
    except ImportError:
        pass
    try:
        folder = copied_folder(args.folder.expanduser().resolve(), args.limit, tmp)
        n = len(list(folder.iterdir()))
        ckpt = random_checkpoint()
        # warm-up: the first-ever run with this model exports and times the towers and
        # remembers its spec (its cost is reported; the pairs run with the cache warm)
        warm = copied_folder(args.folder.expanduser().resolve(), 16, tmp / "warm-src")
        result["first_ever_run_16_images"] = run_vlmsearch(warm, ckpt, tmp / "warm-coll", args, {})
        print("first-ever run (16 images)", result["first_ever_run_16_images"]["phase"])
        result["model_only_before"] = model_only(ckpt, args.batch_size, args.model_batches)
        print("model-only", result["model_only_before"], flush=True)
        pairs = []
        for i in range(args.pairs):
            pair: dict[str, Any] = {}
            order = ["vlmsearch", "clip_retrieval"]
            if i % 2:
                order.reverse()
            for tool in order:
                if tool == "vlmsearch":
                    pair[tool] = run_vlmsearch(folder, ckpt, tmp / f"coll{i}", args, {})
                elif not args.skip_clip_retrieval:
                    pair[tool] = run_clip_retrieval(folder, ckpt, tmp / f"cr{i}", args)
                if tool in pair:
                    print(f"pair {i} {tool}", pair[tool]["phase"], flush=True)
            pairs.append(pair)
        result["pairs"] = pairs
        if args.torch_too:
            result["vlmsearch_torch_path"] = run_vlmsearch(
                folder, ckpt, tmp / "coll-torch", args, {"VLMSEARCH_IMAGE_ONNX": "0"}
            )
            print("torch path", result["vlmsearch_torch_path"]["phase"], flush=True)
        result["model_only_after"] = model_only(ckpt, args.batch_size, args.model_batches)
        names = sorted(p.name for p in folder.iterdir())
        result["cosine_to_reference"] = {
            "vlmsearch": reference_cosines(tmp / "coll0", folder, ckpt, names)
        }
        if not args.skip_clip_retrieval:
            result["cosine_to_reference"]["clip_retrieval"] = clip_retrieval_cosines(
                tmp / "cr0", folder, ckpt, names
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["summary"] = summarise(result, n)
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print("wrote", args.json)


def summarise(r: dict[str, Any], n: int) -> dict[str, Any]:
    v = [p["vlmsearch"]["images_per_s_command"] for p in r["pairs"]]
    best = max(r["model_only_before"]["best"], r["model_only_after"]["best"])
    s: dict[str, Any] = {
        "images": n,
        "vlmsearch_images_per_s_median": statistics.median(v),
        "vlmsearch_images_per_s_each": v,
        "vlmsearch_engine": r["pairs"][0]["vlmsearch"]["engine"],
        "best_exact_model_only_images_per_s": best,
        "vlmsearch_fraction_of_best_model_only": round(statistics.median(v) / best, 3),
        "vlmsearch_peak_pss_tree_mb_median": statistics.median(
            p["vlmsearch"]["peak_pss_tree_mb"] for p in r["pairs"]
        ),
        "vlmsearch_peak_rss_main_mb_median": statistics.median(
            p["vlmsearch"]["peak_rss_main_mb"] for p in r["pairs"]
        ),
        "other_processes_cores_max": max(
            p[t]["phase"]["other_processes_cores"] for p in r["pairs"] for t in p
        ),
    }
    if all("clip_retrieval" in p for p in r["pairs"]):
        c = [p["clip_retrieval"]["images_per_s_command"] for p in r["pairs"]]
        ratios = [a / b for a, b in zip(v, c, strict=True)]
        s["clip_retrieval_images_per_s_median"] = statistics.median(c)
        s["clip_retrieval_images_per_s_each"] = c
        s["ratio_per_pair"] = [round(x, 3) for x in ratios]
        s["ratio_median"] = round(statistics.median(ratios), 3)
        s["clip_retrieval_peak_pss_tree_mb_median"] = statistics.median(
            p["clip_retrieval"]["peak_pss_tree_mb"] for p in r["pairs"]
        )
    if "vlmsearch_torch_path" in r:
        t = r["vlmsearch_torch_path"]
        s["torch_path_images_per_s"] = t["images_per_s_command"]
        s["torch_path_peak_pss_tree_mb"] = t["peak_pss_tree_mb"]
        s["torch_path_peak_rss_main_mb"] = t["peak_rss_main_mb"]
    return s


if __name__ == "__main__":
    main()
