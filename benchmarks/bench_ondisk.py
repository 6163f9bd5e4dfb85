"""On-disk IVF indexes at scale: build, cold open, warm latency, recall, peak memory.

    python benchmarks/bench_ondisk.py --n 1000000 --json benchmarks/results-ondisk-DATE.json

Each phase runs in a fresh process (``--phase``), so its peak RSS (``ru_maxrss``) is its
own: ``build`` runs the index stage of ``vlmsearch index`` (``finish_index``) over a
synthetic collection written by ``synthetic_collection.py``; ``search`` evicts the
collection's files from the page cache (``posix_fadvise(DONTNEED)``), opens it with
:meth:`vlmsearch.Collection.open` and times the first query (the cold open), then
``--queries`` held-out queries (warm p50/p99, recall@10 against an exact scan).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_core import status_mb  # noqa: E402


class _AnonPeak:
    """The largest RssAnon seen by a thread sampling it every 0.2 s while in the block."""

    def __enter__(self) -> _AnonPeak:
        import threading

        self.peak = status_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, status_mb("RssAnon"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_mb("RssAnon"))


def _vectors(args: argparse.Namespace) -> np.ndarray:
    from synthetic_collection import load_or_make_vectors

    return load_or_make_vectors(
        args.cache, args.n + args.queries, args.dim, 10, 1.0, 32, 0
    )  # the mixture of bench_build.py: 10 clusters, noise 1.0 in 32-dim subspaces


def phase_make(args: argparse.Namespace) -> dict:
    from synthetic_collection import write_collection

    x = _vectors(args)
    coll = args.work / f"n{args.n}"
    if (coll / "manifest.json").is_file():
        return {"reused": str(coll)}
    t = time.perf_counter()
    write_collection(coll, np.asarray(x[: args.n]))
    truth = _exact_top(np.asarray(x[: args.n]), np.asarray(x[args.n :], np.float32), 10)
    np.save(args.work / f"truth-n{args.n}.npy", truth)
    return {"seconds": round(time.perf_counter() - t, 1)}


def _exact_top(x16: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    best = np.full((len(q), k), -np.inf, np.float32)
    ids = np.zeros((len(q), k), np.int64)
    for lo in range(0, len(x16), 262_144):
        s = q @ x16[lo : lo + 262_144].astype(np.float32).T
        cand_s = np.concatenate([best, s], 1)
        cand_i = np.concatenate([ids, np.arange(lo, lo + s.shape[1])[None].repeat(len(q), 0)], 1)
        top = np.argsort(-cand_s, 1)[:, :k]
        best, ids = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return ids


def phase_build(args: argparse.Namespace) -> dict:
    from vlmsearch.ingest.finish import finish_index
    from vlmsearch.ingest.options import IngestOptions, IngestReport
    from vlmsearch.storage.layout import Layout
    from vlmsearch.storage.store import CollectionWriter

    layout = Layout(args.work / f"n{args.n}")
    with layout.lock():
        m = layout.read_manifest()
        writer = CollectionWriter(layout, m)
        writer.previous = m
        opts = IngestOptions(index=args.index, memory_budget=args.memory_budget, rebuild=True)
        report = IngestReport(str(m["root"]), str(layout.path))
        t = time.perf_counter()
        with _AnonPeak() as anon:
            finish_index(writer, opts, report, -1, set(), None)
        seconds = time.perf_counter() - t
    idx = writer.manifest["index"]
    files = [idx["file"], *(idx.get("ondisk") or {}).values()]
    size = sum(layout.file(f).stat().st_size for f in files if isinstance(f, str))
    return {
        "factory": idx["factory"],
        "storage": idx.get("storage", "memory"),
        "search_params": idx["search_params"],
        "build_s": round(seconds, 1),
        "peak_rss_mb": round(status_mb("VmHWM")),  # includes the mapped shard pages it read
        "peak_anon_rss_mb": round(anon.peak),  # the process's own memory, sampled
        "index_bytes": size,
    }


def _evict(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def phase_search(args: argparse.Namespace) -> dict:
    from synthetic_collection import ONE_PERCENT_WHERE

    from vlmsearch import Collection

    folder = args.work / f"n{args.n}"
    _evict(folder)
    x = _vectors(args)
    queries = np.asarray(x[args.n :], np.float32)
    truth = np.load(args.work / f"truth-n{args.n}.npy")
    rss0 = status_mb("VmHWM")
    t = time.perf_counter()
    coll = Collection.open(folder)
    _ = coll.faiss_index
    t_open = time.perf_counter() - t
    t = time.perf_counter()
    filtered = coll.search_vector(queries[0], k=10, where=ONE_PERCENT_WHERE)
    t_first_filtered = time.perf_counter() - t
    t = time.perf_counter()
    coll.search_vector(queries[1], k=10)
    t_first = time.perf_counter() - t
    lat_f = []
    for q in queries[2:52]:
        t = time.perf_counter()
        coll.search_vector(q, k=10, where=ONE_PERCENT_WHERE)
        lat_f.append(time.perf_counter() - t)
    lat, recall = [], []
    anon = status_mb("RssAnon")
    for qi, q in enumerate(queries):
        t = time.perf_counter()
        hits = coll.search_vector(q, k=10)
        lat.append(time.perf_counter() - t)
        anon = max(anon, status_mb("RssAnon"))
        recall.append(len({h.id for h in hits} & set(truth[qi].tolist())) / 10)
    lat_ms = np.array(lat[1:]) * 1000  # the first was already warm-ish: skip it
    return {
        "open_s": round(t_open, 3),
        "first_filtered_query_s": round(t_first_filtered, 3),
        "first_filtered_hits": len(filtered),
        "first_query_s": round(t_first, 3),
        "filtered_p50_ms": round(float(np.percentile(np.array(lat_f) * 1000, 50)), 2),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "recall_at_10": round(float(np.mean(recall)), 3),
        "peak_rss_mb": round(status_mb("VmHWM")),
        "peak_anon_rss_mb": round(anon),  # sampled after each unfiltered query
        "file_rss_mb_at_end": round(status_mb("RssFile")),
        "rss_before_open_mb": round(rss0),
    }


def _run_phase(args: argparse.Namespace, phase: str, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--n", str(args.n), "--dim", str(args.dim)]
    cmd += ["--queries", str(args.queries), "--work", str(args.work), "--cache", str(args.cache)]
    out = subprocess.run(cmd + extra, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--index", action="append", help="index kinds to build (default: ondisk)")
    p.add_argument("--memory-budget", type=int, default=None)
    p.add_argument("--work", type=Path, default=HERE / ".cache" / "ondisk")
    p.add_argument("--cache", type=Path, default=HERE / ".cache")
    p.add_argument("--phase", choices=["make", "build", "search"])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase:
        if args.phase == "build":
            args.index = (args.index or ["ondisk"])[0]
        fn = {"make": phase_make, "build": phase_build, "search": phase_search}[args.phase]
        print(json.dumps(fn(args)))
        return
    results = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n": args.n,
        "dim": args.dim,
        "make": _run_phase(args, "make", []),
        "runs": [],
    }
    for kind in args.index or ["ondisk"]:
        extra = ["--index", kind]
        if args.memory_budget:
            extra += ["--memory-budget", str(args.memory_budget)]
        run = {"index": kind, "build": _run_phase(args, "build", extra)}
        run["search"] = _run_phase(args, "search", [])
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
