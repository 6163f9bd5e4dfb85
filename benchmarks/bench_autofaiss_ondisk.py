"""autofaiss building the same on-disk-sized index as vlmsearch, on the same vectors.

Runs in ``benchmarks/.venv-autofaiss`` (``sh benchmarks/autofaiss_env.sh``). autofaiss's
own choice for these sizes (``OPQ...,IVF..._HNSW32,PQ...``) does not build with faiss
1.15 (RESULTS.md), so the factory vlmsearch chose is forced with ``index_key``; autofaiss
streams the float32 vectors from a folder of ``.npy`` files (written first, not timed)
and writes a memory-mappable index. Reported: build seconds, peak RSS (VmHWM), index
bytes, and recall@10 of the held-out queries at the nprobe autofaiss tuned, against the
exact answer ``bench_ondisk.py`` saved.

    benchmarks/.venv-autofaiss/bin/python benchmarks/bench_autofaiss_ondisk.py \
        --vectors CACHE/mixture-n4000200-...f16.npy --n 4000000 --index-key IVF2048,SQ8 \
        --truth WORK/truth-n4000000.npy --work /tmp/af
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import status_mb  # noqa: E402


def write_parts(x16: np.ndarray, n: int, folder: Path, rows: int = 1_000_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, lo in enumerate(range(0, n, rows)):
        out = folder / f"part-{i:04d}.npy"
        if not out.is_file():
            np.save(out, np.asarray(x16[lo : min(n, lo + rows)], dtype=np.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=Path, required=True, help="float16 .npy, n + queries rows")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--index-key", required=True)
    p.add_argument("--truth", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--memory", default="4G", help="max_index_memory_usage")
    p.add_argument("--available", default="16G", help="current_memory_available")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import faiss
    from autofaiss import build_index

    x16 = np.load(args.vectors, mmap_mode="r")
    emb = args.work / f"emb-n{args.n}"
    write_parts(x16, args.n, emb)
    queries = np.asarray(x16[args.n :], dtype=np.float32)
    truth = np.load(args.truth)
    index_path = args.work / "knn.index"
    t = time.perf_counter()
    _, infos = build_index(
        embeddings=str(emb),
        index_path=str(index_path),
        index_infos_path=str(args.work / "infos.json"),
        save_on_disk=True,
        index_key=args.index_key,
        metric_type="ip",
        max_index_memory_usage=args.memory,
        current_memory_available=args.available,
        should_be_memory_mappable=True,
        nb_cores=os.cpu_count(),
        verbose=20,
    )
    build_s = time.perf_counter() - t
    build_peak = status_mb("VmHWM")
    if not index_path.is_file():
        raise SystemExit(f"autofaiss wrote no index (infos: {infos}); see its log above")
    index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    params = (infos or {}).get("index_param") or ""
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    _, got = index.search(queries, 10)
    recall = np.mean([len(np.intersect1d(g, t)) for g, t in zip(got, truth, strict=True)]) / 10
    out = {
        "builder": "autofaiss",
        "faiss": faiss.__version__,
        "index_key": args.index_key,
        "index_param": params,
        "build_s": round(build_s, 1),
        "build_peak_rss_mb": round(build_peak),
        "index_bytes": index_path.stat().st_size,
        "recall_at_10": round(float(recall), 3),
        "infos": {k: str(v) for k, v in (infos or {}).items()},
    }
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
