#!/usr/bin/env python
"""GPU search figures (issue 6, target 7): exact search bandwidth, IVF and CAGRA throughput.

1. **Exact**: N x d float16 vectors in a FAISS GPU flat index (``GpuIndexFlatIP`` with
   ``useFloat16``); for query batches of 1..4096, the time per batch and the achieved
   read bandwidth N*d*2 bytes / time (one scan of the database per batch) as a fraction
   of the device's memory bandwidth: the spec sheet's, and a device-to-device copy
   measured here with torch when it is installed.
2. **IVF**: ``IVF{nlist},Flat`` trained and searched on the GPU; nprobe swept until
   recall@10 against the exact result reaches the target; queries/s at a batch of 4096.
3. **CAGRA** (only with a cuVS build, ``faiss.GpuIndexCagra``): graph built on the GPU,
   ``itopk_size`` swept the same way. Vectors are L2-normalised, so CAGRA runs with the
   L2 metric, whose ranking equals inner product's here (CAGRA's inner-product recall has
   been poor: FAISS notes).

The data is the benchmarks' Gaussian mixture (``synthetic_collection.subspace_mixture``),
generated in chunks. Without a GPU build of FAISS, or with ``--cpu``, the same steps run
on the CPU with faiss-cpu (flat, IVF; HNSW stands in for CAGRA) so the script can be
tested anywhere: ``--quick`` makes the sizes tiny. Every result records the device,
driver, library versions and date.

GPU run (H100, faiss-gpu or faiss-gpu-cuvs installed):
    python benchmarks/bench_search_gpu.py --n 10000000 --json results-gpu-DATE.json
CPU check:
    python benchmarks/bench_search_gpu.py --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_collection import draw_mixture, mixture_structure  # noqa: E402

# Memory bandwidth from the vendor spec sheets (bytes/s): H100 SXM5 80 GB HBM3 3.35 TB/s,
# H100 PCIe 80 GB HBM2e 2.0 TB/s, H200 141 GB HBM3e 4.8 TB/s (NVIDIA H100 / H200
# datasheets). Matched against the device name, first match wins.
SPEC_BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12))
BATCHES = (1, 4, 16, 64, 256, 1024, 4096)


def device_info(use_gpu: bool) -> dict[str, Any]:
    import faiss

    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "faiss_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0,
        "cuvs": hasattr(faiss, "GpuIndexCagra"),
        "cpu_count": os.cpu_count(),
        "backend": "gpu" if use_gpu else "cpu",
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    if use_gpu:
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,memory.total,clocks.max.memory",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
            name, driver, mem, mclk = (x.strip() for x in out.splitlines()[0].split(","))
            info.update(device=name, driver=driver, memory=mem, max_memory_clock=mclk)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            info["device"] = f"unknown ({e})"
    return info


def spec_bandwidth(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, bw in SPEC_BANDWIDTH:
        if key in (name or ""):
            return bw
    return None


def measured_copy_bandwidth() -> float | None:
    """Device-to-device copy of 4 GiB with torch: bytes read + written per second."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    src = torch.empty(1 << 31, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    secs = (time.perf_counter() - t) / reps
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 32) / secs  # 4 GiB read + 4 GiB written


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """float16 database (n, d) and float32 queries, generated chunk by chunk."""
    rng = np.random.default_rng(args.seed)
    structure = mixture_structure(args.dim, args.clusters, args.subspace, rng)
    base = np.empty((args.n, args.dim), np.float16)
    for lo in range(0, args.n, 1_000_000):
        hi = min(args.n, lo + 1_000_000)
        base[lo:hi] = draw_mixture(hi - lo, structure, args.noise, rng)
    q = draw_mixture(args.queries, structure, args.noise, rng)
    return base, q


def timed(fn: Any, reps: int, sync: Any) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up."""
    fn()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return float(np.median(out))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


def add_chunks(index: Any, base: np.ndarray) -> None:
    for lo in range(0, len(base), 1_000_000):
        index.add(np.ascontiguousarray(base[lo : lo + 1_000_000], dtype=np.float32))


def bench_ivf(
    args: argparse.Namespace,
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    res_gpu: Any,
    sync: Any,
) -> dict[str, Any]:
    """IVF-Flat trained and searched on the GPU (CPU without one): nprobe sweep."""
    import faiss

    use_gpu = res_gpu is not None
    n, d, k = args.n, args.dim, args.k
    nlist = args.nlist or int(2 ** round(np.log2(4 * np.sqrt(n))))
    if use_gpu:
        cfg = faiss.GpuIndexIVFFlatConfig()
        cfg.device = 0
        ivf = faiss.GpuIndexIVFFlat(res_gpu, d, nlist, faiss.METRIC_INNER_PRODUCT, cfg)
    else:
        ivf = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(args.seed + 1)
    train = base[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))].astype(np.float32)
    t = time.perf_counter()
    ivf.train(train)
    train_s = time.perf_counter() - t
    del train
    t = time.perf_counter()
    add_chunks(ivf, base)
    entry: dict[str, Any] = {
        "factory": f"IVF{nlist},Flat",
        "train_s": round(train_s, 1),
        "add_s": round(time.perf_counter() - t, 1),
        "sweep": [],
    }
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
        if nprobe > nlist:
            break
        sp = faiss.SearchParametersIVF(nprobe=nprobe)
        found = ivf.search(queries, k, params=sp)[1]
        r = recall(found, truth)
        qb = np.ascontiguousarray(np.resize(queries, (args.max_batch, d)))
        secs = timed(lambda qb=qb, sp=sp, ix=ivf: ix.search(qb, k, params=sp), 3, sync)
        row = {"nprobe": nprobe, "recall": round(r, 4), "queries_per_s": round(len(qb) / secs)}
        entry["sweep"].append(row)
        print(f"[ivf] {json.dumps(row)}", flush=True)
        if r >= args.target:
            entry["at_target"] = row
            break
    del ivf
    return entry


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    use_gpu = not args.cpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": device_info(use_gpu),
    }
    if not use_gpu:
        res["note"] = "no FAISS GPU build or GPU seen (or --cpu): CPU fallback with faiss-cpu"
    n, d, k = args.n, args.dim, args.k
    t = time.perf_counter()
    base, queries = make_data(args)
    res["data"] = {
        "n": n,
        "dim": d,
        "k": k,
        "queries": len(queries),
        "kind": f"Gaussian mixture, {args.clusters} clusters, noise {args.noise} in a "
        f"{args.subspace}-dim subspace each, L2-normalised, stored float16",
        "generate_s": round(time.perf_counter() - t, 1),
    }
    sync: Any = lambda: None  # noqa: E731  (faiss GPU calls return after synchronising)
    res_gpu = faiss.StandardGpuResources() if use_gpu else None
    if res_gpu is not None:
        res_gpu.setTempMemory(args.temp_mem_gb << 30)

    # 1. exact search over float16 storage
    if use_gpu:
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = True
        cfg.device = 0
        flat = faiss.GpuIndexFlatIP(res_gpu, d, cfg)
    else:
        flat = faiss.IndexScalarQuantizer(
            d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
    t = time.perf_counter()
    add_chunks(flat, base)
    res["exact_add_s"] = round(time.perf_counter() - t, 1)
    name = res["machine"].get("device", "")
    spec = spec_bandwidth(name, args.bandwidth) if use_gpu else args.bandwidth
    copy_bw = measured_copy_bandwidth() if use_gpu else None
    res["bandwidth_spec_Bps"] = spec
    res["bandwidth_copy_measured_Bps"] = copy_bw
    scan_bytes = n * d * 2
    rows = []
    for b in [x for x in BATCHES if x <= args.max_batch]:
        qb = np.ascontiguousarray(np.resize(queries, (b, d)))
        reps = max(3, min(50, int(args.budget_s / max(1e-4, 0.001 * b))))
        secs = timed(lambda qb=qb, ix=flat: ix.search(qb, k), reps if use_gpu else 3, sync)
        row = {
            "batch": b,
            "ms_per_batch": round(secs * 1e3, 3),
            "queries_per_s": round(b / secs, 1),
            "scan_bytes_per_s": round(scan_bytes / secs, 1),
            "tflops": round(2 * n * d * b / secs / 1e12, 2),
        }
        if spec:
            row["fraction_of_spec"] = round(scan_bytes / secs / spec, 3)
        if copy_bw:
            row["fraction_of_copy"] = round(scan_bytes / secs / copy_bw, 3)
        rows.append(row)
        print(f"[exact] {json.dumps(row)}", flush=True)
    res["exact"] = rows
    truth = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), 1024):
        truth[lo : lo + 1024] = flat.search(queries[lo : lo + 1024], k)[1]
    res["truth"] = "exact search over the float16-stored vectors"
    del flat

    parts = {x.strip() for x in args.parts.split(",")}
    res["ivf"] = bench_ivf(args, base, queries, truth, res_gpu, sync) if "ivf" in parts else {}

    # 3. CAGRA (cuVS) on the GPU; HNSW as the CPU stand-in
    graph: dict[str, Any] = {}
    if "graph" not in parts:
        graph = {"skipped": "not in --parts"}
    elif use_gpu and hasattr(faiss, "GpuIndexCagra"):
        cfg = faiss.GpuIndexCagraConfig()
        cfg.graph_degree = args.cagra_degree
        cfg.intermediate_graph_degree = 2 * args.cagra_degree
        index = faiss.GpuIndexCagra(res_gpu, d, faiss.METRIC_L2, cfg)
        t = time.perf_counter()
        index.train(np.ascontiguousarray(base, dtype=np.float32))  # CAGRA builds in train()
        graph = {"kind": f"CAGRA degree {args.cagra_degree}", "build_s": 0.0, "sweep": []}
        graph["build_s"] = round(time.perf_counter() - t, 1)
        values = (16, 32, 64, 128, 256, 512)

        def params_for(v: int) -> Any:
            p = faiss.SearchParametersCagra()
            p.itopk_size = v
            return p

        pname = "itopk_size"
    elif not use_gpu:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        add_chunks(index, base)
        graph = {"kind": "HNSW32 (CPU stand-in for CAGRA)", "sweep": []}
        graph["build_s"] = round(time.perf_counter() - t, 1)
        values = (16, 32, 64, 128, 256, 512)

        def params_for(v: int) -> Any:
            return faiss.SearchParametersHNSW(efSearch=v)

        pname = "efSearch"
    else:
        graph = {"skipped": "this FAISS build has no cuVS (GpuIndexCagra): use faiss-gpu-cuvs"}
    if "sweep" in graph:
        for v in values:
            sp = params_for(v)
            found = index.search(queries, k, params=sp)[1]
            r = recall(found, truth)
            qb = np.ascontiguousarray(np.resize(queries, (args.max_batch, d)))
            secs = timed(lambda qb=qb, sp=sp: index.search(qb, k, params=sp), 3, sync)
            row = {pname: v, "recall": round(r, 4), "queries_per_s": round(len(qb) / secs)}
            graph["sweep"].append(row)
            print(f"[graph] {json.dumps(row)}", flush=True)
            if r >= args.target:
                graph["at_target"] = row
                break
        del index
    res["graph"] = graph
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="GPU exact-search bandwidth and IVF/CAGRA throughput (CPU fallback).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=10_000, help="recall queries")
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--subspace", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=4096)
    p.add_argument("--nlist", type=int, default=None, help="default: 4 sqrt(n), power of 2")
    p.add_argument("--target", type=float, default=0.95, help="recall@k to reach")
    p.add_argument("--cagra-degree", type=int, default=32)
    p.add_argument("--bandwidth", type=float, default=None, help="bytes/s (default: by name)")
    p.add_argument("--budget-s", type=float, default=2.0, help="rough seconds per batch size")
    p.add_argument("--temp-mem-gb", type=int, default=4, help="FAISS GPU scratch memory")
    p.add_argument("--cpu", action="store_true", help="force the CPU fallback")
    p.add_argument("--parts", default="exact,ivf,graph", help="exact always runs (truth)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (n=20k, 500 queries)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.max_batch = min(args.n, 20_000), min(args.queries, 500), 256
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t = time.perf_counter()
    res = bench(args)
    res["total_s"] = round(time.perf_counter() - t, 1)
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
