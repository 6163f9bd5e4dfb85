#!/usr/bin/env python
"""Core performance figures for vlmsearch: indexing throughput, search latency, FAISS kinds.

Three sections:

1. **Indexing** an image folder with the Python API (``Collection.index``): end-to-end
   images/s, compared with the model's own forward throughput on ready tensors.
2. **Search latency** through ``Collection.search_vector`` (precomputed query vectors, so
   text encoding is excluded), unfiltered and with a ``where`` filter, plus the time of a
   full text search (``Collection.search``, text encoding included).
3. **Synthetic FAISS**: clustered random vectors indexed with
   ``vlmsearch.storage.ann.faiss_store`` as flat / hnsw / ivf / auto: build time, single-query
   latency and recall@k against the exact (flat) result.

Run ``python benchmarks/bench_core.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RANDOM_INIT_NOTE = (
    "weights are RANDOM (no pretrained checkpoint): compute is the same as the real "
    "model, so only speed figures are meaningful, not search quality"
)


# -- helpers ------------------------------------------------------------------------------------
def percentiles(samples_s: list[float]) -> dict[str, float]:
    """Latency summary in milliseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "min_ms": round(float(a.min()), 3),
        "max_ms": round(float(a.max()), 3),
    }


def time_calls(fn: Callable[[int], Any], n: int, warmup: int) -> list[float]:
    """Call ``fn(i)`` ``warmup`` times untimed, then ``n`` times timed; seconds per call."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: ``VmHWM`` (peak RSS; unlike
    ``ru_maxrss``, not carried over an exec from a big parent), ``RssAnon`` (the
    process's own memory), ``RssFile`` (mapped file pages the kernel can drop); -1 when
    absent (not Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return -1.0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return -1.0


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews every figure here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decode workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, Any]:
    import duckdb
    import faiss
    import open_clip
    import pyarrow
    import torch

    import vlmsearch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_gb": mem_gb,
        "loadavg_start": loadavg(),
        "torch_threads": torch.get_num_threads(),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "cuda_available": bool(torch.cuda.is_available()),
        "faiss_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0,
        "versions": {
            "vlmsearch": vlmsearch.__version__,
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
            "duckdb": duckdb.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }


def list_images(folder: Path) -> list[Path]:
    from vlmsearch.imaging.scan import scan

    return [folder / f.path for f in scan(folder)]


def stage_images(src: Path, dest: Path, limit: int | None) -> tuple[Path, int]:
    """The folder to index: ``src`` itself, or ``dest`` holding symlinks to its first
    ``limit`` images (in the scanner's sorted order, subfolders kept)."""
    files = list_images(src)
    if limit is None or limit >= len(files):
        return src, len(files)
    dest.mkdir(parents=True)
    for f in files[:limit]:
        link = dest / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f.resolve())
    return dest, limit


def input_size(encoder: Any) -> tuple[int, int]:
    size = (encoder.spec.get("preprocess") or {}).get("size")
    if size is None:
        size = getattr(getattr(encoder.model, "visual", None), "image_size", 224)
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


# -- section 1 + 2: real images -------------------------------------------------------------------
def bench_images(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from vlmsearch import Collection
    from vlmsearch.ingest.options import IngestOptions
    from vlmsearch.models.encoders import load_encoder

    src = Path(args.images).expanduser().resolve()
    root, n_images = stage_images(src, work / "images", args.limit)
    out: dict[str, Any] = {
        "source": str(src),
        "indexed_folder": str(root),
        "images": n_images,
        "limit": args.limit,
        "model": args.model,
        "batch_size": args.batch_size,
        "workers": args.workers,
    }
    print(f"\n[images] indexing {n_images} images from {src} with {args.model} ...", flush=True)

    t = time.perf_counter()
    encoder = load_encoder(args.model, device=args.device)
    out["model_load_s"] = round(time.perf_counter() - t, 3)
    out["encoder"] = encoder.spec.get("name")
    out["random_weights"] = encoder.spec.get("pretrained") is None and not encoder.spec.get(
        "checkpoint"
    )
    out["device"] = getattr(encoder, "device", None)

    opts = IngestOptions(batch_size=args.batch_size, workers=args.workers, rebuild=True)
    t = time.perf_counter()
    coll = Collection.index(root, collection=work / "collection", encoder=encoder, options=opts)
    index_wall = time.perf_counter() - t
    rep = coll.last_report
    assert rep is not None
    out["ingest_report"] = rep.to_dict()
    out["index_wall_s"] = round(index_wall, 3)
    out["encode_images_per_s"] = round(rep.images_per_second, 2)
    out["ingest_images_per_s"] = round(rep.encoded / rep.seconds, 2) if rep.seconds else 0.0
    out["errors"] = rep.errors
    print(
        f"[images] encoded {rep.encoded} in {rep.encode_seconds:.1f}s "
        f"(ingest total {rep.seconds:.1f}s, index {rep.index_factory})",
        flush=True,
    )

    # Model-only forward throughput on ready tensors of the model's input size.
    h, w = input_size(encoder)
    gen = torch.Generator().manual_seed(args.seed)
    batch = torch.randn(args.batch_size, 3, h, w, generator=gen)
    encoder.encode_pixels(batch)  # warm-up, untimed
    n_batches = max(1, args.model_batches)
    t = time.perf_counter()
    for _ in range(n_batches):
        encoder.encode_pixels(batch)
    fwd = time.perf_counter() - t
    model_ips = n_batches * args.batch_size / fwd
    out["model_only"] = {
        "input": [args.batch_size, 3, h, w],
        "batches": n_batches,
        "seconds": round(fwd, 3),
        "images_per_s": round(model_ips, 2),
    }
    out["ratio_encode_to_model_only"] = round(rep.images_per_second / model_ips, 3)
    out["ratio_ingest_to_model_only"] = round(out["ingest_images_per_s"] / model_ips, 3)
    print(f"[images] model-only forward: {model_ips:.1f} images/s", flush=True)

    # Search latency: precomputed query vectors, so text encoding is excluded.
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    n_q = args.queries
    texts = [f"a photo of a {IMAGENET_CLASSNAMES[i % 1000]}" for i in range(n_q + args.warmup)]
    t = time.perf_counter()
    qv = coll.encoder.encode_texts(texts)
    out["query_text_encode_batch"] = {
        "texts": len(texts),
        "seconds": round(time.perf_counter() - t, 3),
    }
    k = args.k
    allowed = None
    if args.where:
        from vlmsearch.storage import metadata

        allowed = metadata.filter_ids(coll.table, args.where)
    out["collection_size"] = len(coll)
    out["k"] = k
    out["where"] = args.where
    out["where_matches"] = int(len(allowed)) if allowed is not None else None
    out["faiss_index"] = (coll.manifest.get("index") or {}).get("factory")

    # untimed first call: loads the FAISS index file and the vectors
    t = time.perf_counter()
    coll.search_vector(qv[0], k=k)
    out["first_search_vector_s"] = round(time.perf_counter() - t, 4)
    unf = time_calls(lambda i: coll.search_vector(qv[i], k=k), n_q, args.warmup)
    out["search_vector_unfiltered"] = percentiles(unf)
    if args.where:
        filt = time_calls(
            lambda i: coll.search_vector(qv[i], k=k, where=args.where), n_q, args.warmup
        )
        out["search_vector_where"] = percentiles(filt)

    # Full text search, text encoding included (one warm call reported, plus a median).
    text = "a photo of a dog"
    t = time.perf_counter()
    coll.search(text, k=k)
    out["text_search_one_s"] = round(time.perf_counter() - t, 4)
    ts = time_calls(lambda i: coll.search(f"a photo of a dog {i}", k=k), args.text_queries, 0)
    out["text_search"] = percentiles(ts)
    if args.where:
        ts = time_calls(
            lambda i: coll.search(f"a photo of a dog {i}", k=k, where=args.where),
            args.text_queries,
            0,
        )
        out["text_search_where"] = percentiles(ts)
    return out


# -- section 3: synthetic FAISS -------------------------------------------------------------------
def clustered_vectors(
    n: int, d: int, clusters: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian mixture: random unit centres plus isotropic noise whose expected norm is
    ``noise`` (relative to the unit centre), then L2-normalised. float32 (n, d)."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = noise / np.sqrt(d)
    x = np.empty((n, d), np.float32)
    step = 50_000
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        labels = rng.integers(0, clusters, hi - lo)
        x[lo:hi] = centres[labels] + sigma * rng.standard_normal((hi - lo, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from vlmsearch.storage.ann import faiss_store
    from vlmsearch.storage.ann.plan import plan_index

    n, d, k = args.synthetic_n, args.dim, args.k
    rng = np.random.default_rng(args.seed)
    print(
        f"\n[synthetic] {n} clustered vectors, d={d}, {args.clusters} clusters, "
        f"noise {args.noise} ...",
        flush=True,
    )
    t = time.perf_counter()
    allv = clustered_vectors(n + args.synthetic_queries, d, args.clusters, args.noise, rng)
    gen_s = time.perf_counter() - t
    base, queries = allv[:n], allv[n:]  # queries: same mixture, not in the database
    ids = np.arange(n, dtype=np.int64)
    out: dict[str, Any] = {
        "data": (
            f"Gaussian mixture: {args.clusters} random unit centres + isotropic noise of "
            f"expected norm {args.noise}, then L2-normalised (NOT real embeddings)"
        ),
        "n": n,
        "dim": d,
        "clusters": args.clusters,
        "noise": args.noise,
        "queries": len(queries),
        "k": k,
        "generate_s": round(gen_s, 3),
        "kinds": {},
    }

    built: dict[tuple[str, str], str] = {}  # (factory, params) -> kind already measured
    truth: np.ndarray | None = None
    kinds = [s.strip() for s in args.kinds.split(",") if s.strip()]
    # flat first: it is the ground truth for recall
    order = ["flat"] + [x for x in kinds if x != "flat"]
    for kind in order:
        plan = plan_index(kind, n, d)
        key = (plan.factory, json.dumps(plan.search_params, sort_keys=True))
        entry: dict[str, Any] = {
            "factory": plan.factory,
            "search_params": plan.search_params,
            "reason": plan.reason,
        }
        if key in built:
            entry["same_as"] = built[key]
            entry.update(
                {x: out["kinds"][built[key]].get(x) for x in ("build_s", "latency", "recall")}
            )
            out["kinds"][kind] = entry
            print(f"[synthetic] {kind}: same plan as {built[key]} ({plan.factory}), not rebuilt")
            continue
        print(f"[synthetic] {kind}: building {plan.factory} ...", flush=True)
        t = time.perf_counter()
        index = faiss_store.build_index(plan, d, ids, base)
        entry["build_s"] = round(time.perf_counter() - t, 3)
        try:
            entry["serialized_mb"] = round(faiss.serialize_index(index).nbytes / 1e6, 1)
        except (RuntimeError, MemoryError):
            entry["serialized_mb"] = None
        results = np.empty((len(queries), k), np.int64)

        def one(
            i: int, index: Any = index, plan: Any = plan, results: np.ndarray = results
        ) -> None:
            _, found = faiss_store.search(index, queries[i : i + 1], k, plan.search_params)
            results[i] = found[0]

        warm = min(args.warmup, len(queries))
        for i in range(warm):
            one(i)
        lat = []
        for i in range(len(queries)):
            t = time.perf_counter()
            one(i)
            lat.append(time.perf_counter() - t)
        entry["latency"] = percentiles(lat)
        t = time.perf_counter()
        faiss_store.search(index, queries, k, plan.search_params)
        batch_s = time.perf_counter() - t
        entry["batch_search_qps"] = round(len(queries) / batch_s, 1)
        if kind == "flat":
            truth = results.copy()
        assert truth is not None
        hits = [len(set(results[i]) & set(truth[i])) for i in range(len(queries))]
        entry["recall"] = round(float(np.mean(hits)) / k, 4)
        built[key] = kind
        out["kinds"][kind] = entry  # flat is always reported: it is the recall reference
        print(
            f"[synthetic] {kind}: build {entry['build_s']:.2f}s, "
            f"p50 {entry['latency']['p50_ms']:.3f} ms, recall@{k} {entry['recall']:.4f}",
            flush=True,
        )
        del index
    return out


# -- report ---------------------------------------------------------------------------------------
def table(rows: list[tuple[str, str]]) -> str:
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a.ljust(w)}  {b}" for a, b in rows)


def print_report(res: dict[str, Any]) -> None:
    m = res["machine"]
    print("\n" + "=" * 78)
    print("vlmsearch core benchmark")
    print("=" * 78)
    print(
        table(
            [
                ("date", m["date"]),
                (
                    "cpu",
                    f"{m['cpu_model']} - {m['cpu_count']} logical cores "
                    f"(affinity {m['cpu_affinity']}), {m['memory_gb']} GB RAM",
                ),
                ("gpu", f"torch cuda {m['cuda_available']}, faiss gpus {m['faiss_gpus']}"),
                ("threads", f"torch {m['torch_threads']}, faiss omp {m['faiss_omp_threads']}"),
                ("versions", ", ".join(f"{a} {b}" for a, b in m["versions"].items())),
                (
                    "load average",
                    f"{m['loadavg_start']} at start, {res.get('loadavg_end')} at end (1/5/15 min)",
                ),
                ("command", res["command"]),
            ]
        )
    )
    warning = busy_warning(res)
    if warning:
        print(f"  {warning}")
    im = res.get("images")
    if im:
        rep = im["ingest_report"]
        print("\n1. Indexing (Collection.index)")
        if im["random_weights"]:
            print(f"  NOTE: {im['encoder']}: {RANDOM_INIT_NOTE}")
        mo = im["model_only"]
        print(
            table(
                [
                    (
                        "images",
                        f"{im['images']} from {im['source']}"
                        + (f" (first {im['limit']})" if im["limit"] else ""),
                    ),
                    ("model / device", f"{im['encoder']} on {im['device']}"),
                    ("batch size / workers", f"{im['batch_size']} / {im['workers']}"),
                    ("model load", f"{im['model_load_s']:.2f} s (not in the figures below)"),
                    ("encoded / errors", f"{rep['encoded']} / {rep['errors']}"),
                    (
                        "encode phase",
                        f"{rep['encode_seconds']:.2f} s -> "
                        f"{im['encode_images_per_s']:.2f} images/s (decode+preprocess+model+store)",
                    ),
                    (
                        "whole ingest",
                        f"{rep['seconds']:.2f} s -> {im['ingest_images_per_s']:.2f}"
                        f" images/s (scan+encode+index {rep['index_factory']}+commit)",
                    ),
                    (
                        "model-only forward",
                        f"{mo['images_per_s']:.2f} images/s "
                        f"(encode_pixels on random {tuple(mo['input'])}, {mo['batches']} batches)",
                    ),
                    (
                        "end-to-end / model-only",
                        f"{im['ratio_encode_to_model_only']:.3f} "
                        f"(encode phase), {im['ratio_ingest_to_model_only']:.3f} (whole ingest)",
                    ),
                ]
            )
        )
        sec = im.get("section") or {}
        if sec:
            print(
                f"  section: {sec['wall_s']} s wall, {sec['cpu_s']} s CPU of this process "
                f"({sec['cores_used']} cores on average); other processes "
                f"{sec['other_processes_cores']} cores"
            )
        print(
            f"\n2. Search latency (collection of {im['collection_size']}, "
            f"index {im['faiss_index']}, k={im['k']})"
        )
        print("  search_vector: precomputed query vectors, text encoding excluded")

        def lat(d: dict[str, Any]) -> str:
            return (
                f"p50 {d['p50_ms']:.3f} ms  p99 {d['p99_ms']:.3f} ms  "
                f"(mean {d['mean_ms']:.3f}, max {d['max_ms']:.3f}, n={d['n']})"
            )

        rows = [("search_vector", lat(im["search_vector_unfiltered"]))]
        if im.get("search_vector_where"):
            rows.append(
                (
                    f'search_vector where "{im["where"]}" ({im["where_matches"]} match)',
                    lat(im["search_vector_where"]),
                )
            )
        rows.append(
            (
                "one text search (warm)",
                f"{im['text_search_one_s'] * 1000:.1f} ms "
                "(Collection.search, text encoding included)",
            )
        )
        rows.append(("text search", lat(im["text_search"])))
        if im.get("text_search_where"):
            rows.append(("text search + where", lat(im["text_search_where"])))
        print(table(rows))
    sy = res.get("synthetic")
    if sy:
        print(
            f"\n3. Synthetic FAISS via faiss_store (n={sy['n']}, d={sy['dim']}, k={sy['k']}, "
            f"{sy['queries']} single queries)"
        )
        print(f"  data: {sy['data']}")
        hdr = (
            f"  {'kind':6} {'factory':14} {'params':18} {'build s':>9} {'p50 ms':>9} "
            f"{'p99 ms':>9} {'recall@' + str(sy['k']):>10} {'batch q/s':>10}"
        )
        print(hdr)
        for kind, e in sy["kinds"].items():
            params = ",".join(f"{a}={b}" for a, b in e["search_params"].items()) or "-"
            note = f"  (same plan as {e['same_as']}, not rebuilt)" if e.get("same_as") else ""
            lt = e.get("latency") or {}
            qps = e.get("batch_search_qps")
            print(
                f"  {kind:6} {e['factory']:14} {params:18} {e['build_s']:>9.2f} "
                f"{lt.get('p50_ms', float('nan')):>9.3f} {lt.get('p99_ms', float('nan')):>9.3f} "
                f"{e['recall']:>10.4f} {(f'{qps:.0f}' if qps else '-'):>10}{note}"
            )
        print("  recall is against the exact flat result on the same vectors")
        sec = sy.get("section") or {}
        if sec:
            print(
                f"  section: {sec['wall_s']} s wall, {sec['cpu_s']} s CPU of this process "
                f"({sec['cores_used']} cores on average); other processes "
                f"{sec['other_processes_cores']} cores"
            )
    print("=" * 78)


def section_info(t0: float, cpu0: float, busy0: float | None) -> dict[str, Any]:
    """Wall and CPU time of a section, and how much CPU *other* processes took meanwhile."""
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    busy1 = machine_busy_seconds()
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = round(max(0.0, (busy1 - busy0) - cpu) / wall, 2)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cores_used": round(cpu / wall, 2) if wall > 0 else None,
        "other_processes_cores": others,
        "loadavg_end": loadavg(),
    }


OTHERS_MAX = 0.2  # cores of other work tolerated before the figures are flagged


def busy_warning(res: dict[str, Any]) -> str | None:
    flagged = [
        f"{name}: {sec['other_processes_cores']} cores"
        for name in ("images", "synthetic")
        if (sec := (res.get(name) or {}).get("section"))
        and (sec.get("other_processes_cores") or 0) > OTHERS_MAX
        and sec["wall_s"] >= 5  # /proc/stat ticks are too coarse for shorter sections
    ]
    if flagged:
        return (
            "WARNING: other processes used CPU during the run ("
            + "; ".join(flagged)
            + " on average): figures are pessimistic; rerun on an idle machine"
        )
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Indexing throughput, search latency and FAISS figures for vlmsearch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", nargs="?", help="image folder to index (omit with --skip-images)")
    p.add_argument("--limit", type=int, default=None, help="index only the first N images")
    p.add_argument(
        "--model",
        default="ViT-B-32",
        help="open_clip model string; a bare ARCH is random-init (speed only); "
        "ARCH:/path/ckpt.pt loads local weights",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if seen, else cpu)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="decode workers")
    p.add_argument("--model-batches", type=int, default=4, help="timed batches, model-only")
    p.add_argument("--queries", type=int, default=200, help="timed search_vector queries")
    p.add_argument("--text-queries", type=int, default=20, help="timed full text searches")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up queries")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--where", default="width >= 400", help="filter for the filtered search")
    p.add_argument("--synthetic-n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=100, help="mixture components")
    p.add_argument(
        "--noise", type=float, default=1.0, help="expected noise norm relative to unit centres"
    )
    p.add_argument("--synthetic-queries", type=int, default=200)
    p.add_argument("--kinds", default="flat,hnsw,ivf,auto")
    p.add_argument("--skip-images", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write all figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary collection")
    args = p.parse_args(argv)
    if not args.skip_images and not args.images:
        p.error("give an image folder, or --skip-images")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="vlmsearch-bench-"))
    # Keep the user's "last indexed collection" pointer untouched.
    os.environ["XDG_STATE_HOME"] = str(work / "state")
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(),
        "args": {a: (str(b) if isinstance(b, Path) else b) for a, b in vars(args).items()},
    }
    try:
        if not args.skip_images:
            t, c, b = time.perf_counter(), cpu_seconds(), machine_busy_seconds()
            res["images"] = bench_images(args, work)
            res["images"]["section"] = section_info(t, c, b)
        if not args.skip_synthetic:
            t, c, b = time.perf_counter(), cpu_seconds(), machine_busy_seconds()
            res["synthetic"] = bench_synthetic(args)
            res["synthetic"]["section"] = section_info(t, c, b)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    res["loadavg_end"] = loadavg()
    res["busy_warning"] = busy_warning(res)
    print_report(res)
    print(f"total {res['total_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
