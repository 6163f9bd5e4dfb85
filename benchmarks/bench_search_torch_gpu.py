#!/usr/bin/env python
"""Exact search on the GPU with torch (issue 21, target 3): bandwidth and recall.

The scan that ``vlmsearch.storage.ann.torch_exact`` runs when faiss has no GPU: N x d
float16 vectors on the device, per query batch a chunked fp16 matmul + ``torch.topk``
merge (``scan_topk``) keeping k + RESCORE_MARGIN candidates. For batches of 1..4096 it
times a whole batch (queries to the device, scan, candidates back to the host) and
reports the achieved read bandwidth N*d*2 bytes / time as a fraction of the spec sheet's
(``bench_search_gpu.SPEC_BANDWIDTH``) and of a device-to-device copy measured here;
without a mask and with a row mask allowing ``--allowed`` of the rows. Not timed: the
float32 rescoring vlmsearch then does on the host (nq x (k + margin) rows of the index),
as there is no host index at this size, and building the mask (``mask_build_ms``).

Recall@k on ``--recall-queries`` queries, against a float32 reference over the same
stored vectors (each chunk upcast to float32, float32 queries; so it measures the fp16
scan, not the fp16 storage): ``recall_fp16`` compares the scan's own top-k ids;
``recall_rescored`` the top-k after rescoring the k + margin candidates in float32 from
the stored vectors (what vlmsearch does, from the index's float32 vectors on the host);
``recall_fp16_ties`` counts a returned id as right when its reference score is within
``--tie`` of the reference k-th score (fp16 rounding). Masked recall uses the same mask.

The data is the benchmarks' Gaussian mixture (``synthetic_collection.mixture_structure``)
drawn on the device chunk by chunk, never through faiss or host memory.

GPU run (one H100/H200, torch with CUDA; no faiss-gpu needed):
    python benchmarks/bench_search_torch_gpu.py --json results-torch-gpu-DATE.json
CPU check (tiny, float32 on the CPU device; ``--dtype float16`` to try the fp16 scan):
    python benchmarks/bench_search_torch_gpu.py --quick --cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_search_gpu import device_info, measured_copy_bandwidth, spec_bandwidth, timed  # noqa: E402
from synthetic_collection import mixture_structure  # noqa: E402

from vlmsearch.storage.ann import torch_exact as te  # noqa: E402


def draw(n: int, structure: Any, noise: float, gen: Any, device: Any, out: Any) -> None:
    """``n`` normalised mixture draws into ``out`` (n, d), built on ``device``."""
    import torch

    centres, bases = structure
    c = torch.from_numpy(centres).to(device)
    b = [torch.from_numpy(x).to(device) for x in bases]
    scale = noise / np.sqrt(b[0].shape[0])
    for lo in range(0, n, 1 << 20):
        hi = min(n, lo + (1 << 20))
        labels = torch.randint(0, len(b), (hi - lo,), generator=gen, device=device)
        x = c[labels]
        for j, basis in enumerate(b):
            rows = (labels == j).nonzero().squeeze(1)
            g = torch.randn(len(rows), basis.shape[0], generator=gen, device=device)
            x[rows] += scale * (g @ basis)
        out[lo:hi] = torch.nn.functional.normalize(x, dim=1).to(out.dtype)


def reference(xb: Any, q32: Any, k: int, mask: Any) -> tuple[Any, Any]:
    """float32 exact top-k over the stored vectors, chunk by chunk."""
    import torch

    best_s = best_i = None
    for lo in range(0, len(xb), 1 << 20):
        s = q32 @ xb[lo : lo + (1 << 20)].float().T
        if mask is not None:
            s.masked_fill_(~mask[lo : lo + (1 << 20)], float("-inf"))
        cs, ci = torch.topk(s, min(k, s.shape[1]), dim=1)
        ci += lo
        if best_s is not None:
            cs, ci = torch.cat((best_s, cs), 1), torch.cat((best_i, ci), 1)
            cs, pos = torch.topk(cs, k, dim=1)
            ci = torch.gather(ci, 1, pos)
        best_s, best_i = cs, ci
    return best_s, best_i


def recalls(xb: Any, q32: Any, k: int, mask: Any, tie: float) -> dict[str, float]:
    import torch

    ref_s, ref_i = reference(xb, q32, k, mask)
    cand_s, cand_i = te.scan_topk(xb, q32.to(xb.dtype), k + te.RESCORE_MARGIN, mask)
    exact = torch.einsum("qcd,qd->qc", xb[cand_i].float(), q32)
    exact[~torch.isfinite(cand_s)] = float("-inf")
    rescored = torch.gather(cand_i, 1, torch.topk(exact, k, dim=1).indices)
    fp16_i = cand_i[:, :k]
    fp16_ref = torch.einsum("qcd,qd->qc", xb[fp16_i].float(), q32)  # reference scores
    r = {"strict": 0.0, "ties": 0.0, "rescored": 0.0}
    for row in range(len(q32)):
        truth = set(ref_i[row].tolist())
        r["strict"] += len(truth & set(fp16_i[row].tolist())) / k
        r["rescored"] += len(truth & set(rescored[row].tolist())) / k
        r["ties"] += float((fp16_ref[row] >= ref_s[row, -1] - tie).sum()) / k
    n = len(q32)
    return {
        "recall_fp16": round(r["strict"] / n, 5),
        "recall_fp16_ties": round(r["ties"] / n, 5),
        "recall_rescored": round(r["rescored"] / n, 5),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    use_gpu = not args.cpu and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    dtype = (
        getattr(torch, args.dtype) if args.dtype else (torch.float16 if use_gpu else torch.float32)
    )
    sync = torch.cuda.synchronize if use_gpu else (lambda: None)
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": device_info(use_gpu),
    }
    res["machine"].update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    if use_gpu:
        res["machine"]["torch_device"] = torch.cuda.get_device_name(0)
    else:
        res["note"] = f"no CUDA device (or --cpu): {dtype} on the CPU device, a smoke test"
    name = res["machine"].get("torch_device", "")
    spec = spec_bandwidth(name, args.bandwidth) if use_gpu else args.bandwidth
    copy_bw = measured_copy_bandwidth() if use_gpu else None
    res.update(bandwidth_spec_Bps=spec, bandwidth_copy_measured_Bps=copy_bw)

    n, d, k = args.n, args.dim, args.k
    rng = np.random.default_rng(args.seed)
    structure = mixture_structure(d, args.clusters, args.subspace, rng)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    t = time.perf_counter()
    xb = torch.empty((n, d), dtype=dtype, device=device)
    draw(n, structure, args.noise, gen, device, xb)
    q32 = torch.empty((max(args.batches), d), dtype=torch.float32, device=device)
    draw(len(q32), structure, args.noise, gen, device, q32)
    sync()
    mask = torch.rand(n, generator=gen, device=device) < args.allowed
    res["data"] = {
        "n": n,
        "dim": d,
        "k": k,
        "candidates": k + te.RESCORE_MARGIN,
        "dtype": str(dtype),
        "allowed_fraction": args.allowed,
        "kind": f"Gaussian mixture, {args.clusters} clusters, noise {args.noise} in a "
        f"{args.subspace}-dim subspace each, L2-normalised, drawn on the device",
        "generate_s": round(time.perf_counter() - t, 2),
    }
    allowed_ids = mask.nonzero().squeeze(1).cpu().numpy()
    res["mask_build_ms"] = round(  # allowed ids (host) to a row mask, as a filtered search does
        timed(lambda: te.row_mask(allowed_ids, n, device), 3, sync) * 1e3, 3
    )

    q_host = q32.cpu().numpy()
    scan_bytes = n * d * xb.element_size()
    rows = []
    for b in args.batches:
        for m in (None, mask):

            def run(b: int = b, m: Any = m) -> None:
                q = torch.from_numpy(q_host[:b]).to(device, dtype)
                s, i = te.scan_topk(xb, q, k + te.RESCORE_MARGIN, m)
                _ = (s.cpu(), i.cpu())

            with torch.inference_mode():
                secs = timed(run, args.reps, sync)
            row = {
                "batch": b,
                "masked": m is not None,
                "ms_per_batch": round(secs * 1e3, 3),
                "queries_per_s": round(b / secs, 1),
                "scan_bytes_per_s": round(scan_bytes / secs, 1),
            }
            if spec:
                row["fraction_of_spec"] = round(scan_bytes / secs / spec, 3)
            if copy_bw:
                row["fraction_of_copy"] = round(scan_bytes / secs / copy_bw, 3)
            rows.append(row)
            print(f"[scan] {json.dumps(row)}", flush=True)
    res["scan"] = rows
    with torch.inference_mode():
        qr = q32[: args.recall_queries]
        res["recall"] = {
            "queries": len(qr),
            "tie": args.tie,
            "reference": "float32 exact over the stored vectors (float32 queries)",
            "unmasked": recalls(xb, qr, k, None, args.tie),
            "masked": recalls(xb, qr, k, mask, args.tie),
        }
    print(f"[recall] {json.dumps(res['recall'])}", flush=True)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Exact search on the GPU with torch: bandwidth and recall.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batches", default="1,16,256,1024,4096")
    p.add_argument("--allowed", type=float, default=0.1, help="fraction of rows the mask keeps")
    p.add_argument("--recall-queries", type=int, default=200)
    p.add_argument("--tie", type=float, default=2e-3, help="score tolerance for ties")
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--subspace", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=10, help="timed runs per batch (median)")
    p.add_argument("--bandwidth", type=float, default=None, help="bytes/s (default: by name)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU device")
    p.add_argument(
        "--dtype", choices=["float16", "float32"], help="default: fp16 on CUDA, fp32 on CPU"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (n=20k, batches <= 256)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.batches = [int(x) for x in args.batches.split(",")]
    if args.quick:
        args.n, args.reps = min(args.n, 20_000), min(args.reps, 3)
        args.batches = [b for b in args.batches if b <= 256]
        args.recall_queries = min(args.recall_queries, 50)
    args.recall_queries = min(args.recall_queries, max(args.batches))
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
