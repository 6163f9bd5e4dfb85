#!/usr/bin/env python
"""Index build at 1M x 512 (issue 6, target 4): vlmsearch's auto index versus autofaiss.

Both builders run as fresh subprocesses over the same float32 ``.npy`` file (the
:mod:`synthetic_collection` mixture), one after the other, and each reports its build
time, its peak RSS (``ru_maxrss``: total, and above the loaded vectors), the index it
chose with the search parameters it chose, and recall@10 / single-query latency on the
same held-out queries against the same exact result.

- vlmsearch: ``plan_index("auto")`` and ``build_tuned_index`` (build, then
  nprobe/efSearch tuned on held-out rows) -- what ``vlmsearch index`` runs -- in the
  project's venv.
- autofaiss: ``autofaiss.build_index`` (its index choice and its own nprobe/efSearch
  tuning) in ``benchmarks/.venv-autofaiss`` (``sh benchmarks/autofaiss_env.sh``): it pins
  numpy < 2, which the project's venv cannot share.

Run ``python benchmarks/bench_build.py --help``. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AUTOFAISS_PY = HERE / ".venv-autofaiss" / "bin" / "python"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(index: Any, queries: np.ndarray, truth: np.ndarray, k: int, search: Any) -> dict:
    """recall@k and single-query latency of ``search(q) -> ids`` (run in either venv)."""
    for i in range(min(10, len(queries))):
        search(queries[i : i + 1])
    lat, hits = [], []
    for i in range(len(queries)):
        t = time.perf_counter()
        ids = search(queries[i : i + 1])[0]
        lat.append(time.perf_counter() - t)
        hits.append(len(set(ids.tolist()) & set(truth[i].tolist())) / k)
    a = np.asarray(lat) * 1000
    return {
        "recall": round(float(np.mean(hits)), 4),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


# -- workers (each in its own fresh process) ------------------------------------------------
def worker_vlmsearch(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from vlmsearch.storage.ann import faiss_store
    from vlmsearch.storage.ann.plan import plan_index
    from vlmsearch.storage.ann.tune import build_tuned_index

    t = time.perf_counter()
    x = np.load(args.vectors)
    load_s = time.perf_counter() - t
    base_rss = rss_mb()
    q, truth = np.load(args.queries), np.load(args.truth)
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    plan = plan_index("auto", n, d)
    # what `vlmsearch index` runs: build, tune nprobe/efSearch on held-out rows, add them
    index, params, tuning = build_tuned_index(plan, d, ids, x)
    total_s = time.perf_counter() - t
    tune_s = float(tuning.get("seconds", 0.0))
    peak = peak_rss_mb()
    res = measure(
        index, q, truth, args.k, lambda v: faiss_store.search(index, v, args.k, params)[1]
    )
    return {
        "builder": "vlmsearch",
        "faiss": faiss.__version__,
        "factory": plan.factory,
        "reason": plan.reason,
        "search_params": params,
        "tuning": tuning,
        "load_s": round(load_s, 2),
        "build_s": round(total_s - tune_s, 2),
        "tune_s": round(tune_s, 2),
        "total_s": round(total_s, 2),
        "rss_vectors_mb": round(base_rss, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_above_vectors_mb": round(peak - base_rss, 1),
        "index_bytes": int(faiss.serialize_index(index).nbytes),
        **res,
    }


def worker_autofaiss(args: argparse.Namespace) -> dict[str, Any]:
    import faiss
    from autofaiss import build_index

    t = time.perf_counter()
    x = np.load(args.vectors)
    load_s = time.perf_counter() - t
    base_rss = rss_mb()
    q, truth = np.load(args.queries), np.load(args.truth)
    t = time.perf_counter()
    index, infos = build_index(
        embeddings=x,
        save_on_disk=False,
        metric_type="ip",
        max_index_memory_usage=args.memory,
        current_memory_available=args.available,
        nb_cores=os.cpu_count(),
        verbose=30,  # warnings only
    )
    total_s = time.perf_counter() - t
    peak = peak_rss_mb()
    # autofaiss leaves its tuned nprobe/efSearch set on the index it returns
    res = measure(index, q, truth, args.k, lambda v: index.search(v, args.k)[1])
    return {
        "builder": "autofaiss",
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "factory": infos.get("index_key"),
        "search_params": infos.get("index_param"),
        "infos": {key: str(v) for key, v in infos.items()},
        "load_s": round(load_s, 2),
        "total_s": round(total_s, 2),
        "rss_vectors_mb": round(base_rss, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_above_vectors_mb": round(peak - base_rss, 1),
        "index_bytes": int(faiss.serialize_index(index).nbytes),
        **res,
    }


# -- driver -----------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """float32 vectors, held-out queries and their exact top-k, as .npy files."""
    import faiss

    sys.path.insert(0, str(HERE))
    from synthetic_collection import load_or_make_vectors

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tag = f"n{args.n}-d{args.dim}-c{args.clusters}-s{args.noise:g}-sub{args.subspace}"
    vec, qf, tf = work / f"base-{tag}.npy", work / f"queries-{tag}.npy", work / f"truth-{tag}.npy"
    if not (vec.is_file() and qf.is_file() and tf.is_file()):
        allv = load_or_make_vectors(
            args.cache, args.n + args.queries, args.dim, args.clusters, args.noise,
            args.subspace, args.seed,
        )  # fmt: skip
        base = np.asarray(allv[: args.n], dtype=np.float32)
        q = np.asarray(allv[args.n :], dtype=np.float32)
        _, truth = faiss.knn(q, base, args.k, metric=faiss.METRIC_INNER_PRODUCT)
        np.save(vec, base)
        np.save(qf, q)
        np.save(tf, truth)
    return vec, qf, tf


def run_worker(python: str, which: str, args: argparse.Namespace, files: tuple) -> dict[str, Any]:
    vec, qf, tf = files
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        python, str(Path(__file__).resolve()), "--worker", which, "--vectors", str(vec),
        "--queries-file", str(qf), "--truth", str(tf), "--k", str(args.k),
        "--memory", args.memory, "--available", args.available,
    ]  # fmt: skip
    print(f"[build] {which}: {' '.join(cmd[1:3])} ...", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{which} worker failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = round(wall, 1)
    print(f"[build] {which}: {json.dumps(out)}", flush=True)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Build time, peak memory and recall: vlmsearch auto index vs autofaiss.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--subspace", type=int, default=32)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--builders", default="vlmsearch,autofaiss")
    p.add_argument(
        "--memory", default="12G", help="autofaiss max_index_memory_usage (vlmsearch: RAM/2)"
    )
    p.add_argument("--available", default="24G", help="autofaiss current_memory_available")
    p.add_argument("--cache", type=Path, default=HERE / ".cache")
    p.add_argument("--work", type=Path, default=HERE / ".cache" / "build")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=["vlmsearch", "autofaiss"], help=argparse.SUPPRESS)
    p.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--queries-file", dest="queries_path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--truth", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        args.queries = args.queries_path
        fn = worker_vlmsearch if args.worker == "vlmsearch" else worker_autofaiss
        print(json.dumps(fn(args), default=str))
        return 0
    sys.path.insert(0, str(HERE))
    from bench_core import loadavg, machine_info

    res: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(),
        "data": (
            f"{args.n} x {args.dim} Gaussian mixture, {args.clusters} clusters, noise "
            f"{args.noise} in a {args.subspace}-dim subspace each (synthetic_collection.py)"
        ),
        "builders": {},
    }
    files = prepare(args)
    for which in [b.strip() for b in args.builders.split(",") if b.strip()]:
        if which == "autofaiss" and not AUTOFAISS_PY.exists():
            raise SystemExit("no autofaiss venv: run `sh benchmarks/autofaiss_env.sh` first")
        python = str(AUTOFAISS_PY) if which == "autofaiss" else sys.executable
        res["builders"][which] = run_worker(python, which, args, files)
    res["loadavg_end"] = loadavg()
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
