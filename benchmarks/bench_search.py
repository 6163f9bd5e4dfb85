#!/usr/bin/env python
"""Search latency at scale (issue 6, target 2) and the cold CLI (target 3).

``latency``: N synthetic 512-d vectors (a Gaussian mixture, see ``synthetic_collection``)
are written as a real collection (float16 shards + N-row Parquet metadata), then for each
index kind (flat, hnsw, ivf, auto) an index is built with ``vlmsearch.storage.ann.faiss_store``,
committed to the collection, and queried through the Python API,
``Collection.search_vector`` (FAISS, id mapping, metadata rows into ``Hit`` objects): warm
single-query p50/p99, recall@k against exact search, and a ``where`` filter keeping 1% of
the rows timed side by side with the unfiltered query (alternating, same queries).

``cold``: ``vlmsearch search "text"`` in fresh processes on a collection of N vectors whose
manifest names a real text encoder (a checkpoint loaded from a local file), timed end to
end, plus a driver that times the same steps (imports, model load, index load, text
encoding, search) in another fresh interpreter; and ``vlmsearch --help``.

Run ``python benchmarks/bench_search.py --help``. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import loadavg, machine_info, percentiles  # noqa: E402
from synthetic_collection import (  # noqa: E402
    commit_index,
    load_or_make_vectors,
    where_for_fraction,
    write_collection,
)

REPO = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Resident set size of this process now (MB), from /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids (positions = ids here) with a FAISS flat index."""
    import faiss

    _, ids = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def exact_subset_topk(
    base: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int
) -> np.ndarray:
    """Exact top-k among the ``allowed`` ids only (the reference for filtered recall)."""
    scores = queries @ base[allowed].T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return allowed[top]


def recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in pairs]))


# -- target 2: latency ----------------------------------------------------------------------
def bench_latency(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from vlmsearch import Collection
    from vlmsearch.storage.ann import faiss_store
    from vlmsearch.storage.ann.plan import plan_index
    from vlmsearch.storage.ann.tune import build_tuned_index

    n, d, k, nq = args.n, args.dim, args.k, args.queries
    t = time.perf_counter()
    allv = load_or_make_vectors(
        args.cache, n + nq, d, args.clusters, args.noise, args.subspace, args.seed
    )
    gen_s = time.perf_counter() - t
    base16 = np.asarray(allv[:n])
    queries = np.ascontiguousarray(allv[n:], dtype=np.float32)  # same mixture, not stored
    coll_path = work / "collection"
    reuse = args.reuse and (coll_path / "manifest.json").is_file()
    if reuse:
        write_info: dict[str, Any] = {"reused": str(coll_path)}
    else:
        print(f"[latency] writing a collection of {n} vectors to {coll_path} ...", flush=True)
        write_info = write_collection(coll_path, base16, seed=args.seed)
    base = base16.astype(np.float32)  # what the index sees: the stored float16 values
    where = args.where or where_for_fraction(args.where_fraction)
    coll0 = Collection.open(coll_path)
    from vlmsearch.storage import metadata

    allowed = metadata.filter_ids(coll0.table, where)
    del coll0
    print(f"[latency] exact reference for {nq} queries ...", flush=True)
    t = time.perf_counter()
    truth = exact_topk(base, queries, k)
    truth_f = exact_subset_topk(base, queries, allowed, k)
    truth_s = time.perf_counter() - t
    out: dict[str, Any] = {
        "data": (
            f"Gaussian mixture: {args.clusters} random unit centres + noise of expected norm "
            f"{args.noise} in a random {args.subspace}-dim subspace per cluster, L2-normalised, "
            f"stored as float16 (NOT real embeddings); queries are {nq} further draws, not "
            "in the collection"
        ),
        "n": n,
        "dim": d,
        "k": k,
        "queries": nq,
        "warmup": args.warmup,
        "vectors_s": round(gen_s, 2),
        "collection_write": write_info,
        "where": where,
        "where_rows": int(len(allowed)),
        "where_fraction": round(len(allowed) / n, 4),
        "exact_reference_s": round(truth_s, 2),
        "kinds": {},
    }
    built: dict[str, str] = {}
    for kind in [s.strip() for s in args.kinds.split(",") if s.strip()]:
        plan = plan_index(kind, n, d)
        key = json.dumps([plan.factory, plan.search_params], sort_keys=True)
        entry: dict[str, Any] = plan.to_json()
        if key in built:
            entry["same_as"] = built[key]
            out["kinds"][kind] = entry
            print(f"[latency] {kind}: same plan as {built[key]} ({plan.factory})", flush=True)
            continue
        stored = (Collection.open(coll_path).manifest.get("index") or {}) if reuse else {}
        if stored.get("factory") == plan.factory:
            # --reuse: the index already committed there (built by an earlier run)
            entry.update(reused=True, search_params=stored["search_params"])
            entry["tuning"] = stored.get("tuning")
            plan.search_params = dict(stored["search_params"])
            coll = Collection.open(coll_path)
            t = time.perf_counter()
            _ = coll.faiss_index
            entry["index_load_s"] = round(time.perf_counter() - t, 3)
            entry.update(
                time_queries(coll, queries, k, where, args.warmup, truth, truth_f, allowed)
            )
            built[key] = kind
            out["kinds"][kind] = entry
            print(f"[latency] {kind}: {json.dumps(entry)}", flush=True)
            continue
        print(f"[latency] {kind}: building {plan.factory} ...", flush=True)
        # the plan's default search parameters before tuning identify it
        rss0 = rss_mb()
        t = time.perf_counter()
        ids = np.arange(n, dtype=np.int64)
        untuned = dict(plan.search_params)
        # what `vlmsearch index` runs: build, tune nprobe/efSearch on held-out rows, add them
        index, plan.search_params, entry["tuning"] = build_tuned_index(
            plan, d, ids, base
        )
        entry["build_s"] = round(time.perf_counter() - t, 2)
        entry["index_rss_mb"] = round(rss_mb() - rss0, 1)
        entry["search_params"] = dict(plan.search_params)
        if untuned:  # recall with the untuned defaults, for comparison
            _, found = faiss_store.search(index, queries, k, untuned)
            entry["untuned"] = {
                "search_params": untuned,
                "recall": round(recall(list(found), truth, k), 4),
            }
        entry["commit_s"] = round(commit_index(coll_path, index, plan), 2)
        del index
        coll = Collection.open(coll_path)
        t = time.perf_counter()
        _ = coll.faiss_index
        entry["index_load_s"] = round(time.perf_counter() - t, 3)
        entry.update(time_queries(coll, queries, k, where, args.warmup, truth, truth_f, allowed))
        # FAISS alone on the same index and parameters: what the API adds on top
        raw = []
        for i in range(nq):
            t = time.perf_counter()
            faiss_store.search(coll.faiss_index, queries[i : i + 1], k, plan.search_params)
            raw.append(time.perf_counter() - t)
        entry["faiss_only"] = percentiles(raw)
        built[key] = kind
        out["kinds"][kind] = entry
        print(
            f"[latency] {kind}: build {entry['build_s']} s, p50 "
            f"{entry['unfiltered']['p50_ms']} ms (faiss {entry['faiss_only']['p50_ms']} ms), "
            f"recall@{k} {entry['recall']:.4f}; where p50 {entry['filtered']['p50_ms']} ms "
            f"(x{entry['filtered_over_unfiltered_p50']}), recall {entry['filtered_recall']:.4f}",
            flush=True,
        )
        del coll
    return out


def time_queries(
    coll: Any,
    queries: np.ndarray,
    k: int,
    where: str,
    warmup: int,
    truth: np.ndarray,
    truth_f: np.ndarray,
    allowed: np.ndarray,
) -> dict[str, Any]:
    """Unfiltered and filtered ``search_vector`` alternately on the same queries.

    Each filtered query gets a different SQL string with the same rows (``AND id <> -i``),
    so nothing can be served from a cache of earlier filters."""
    nq = len(queries)
    for i in range(min(warmup, nq)):
        coll.search_vector(queries[i], k=k)
        coll.search_vector(queries[i], k=k, where=where)
    lat_u, lat_f, found_u, found_f, cpu_u, cpu_f = [], [], [], [], [], []
    for i in range(nq):
        c = time.thread_time()
        t = time.perf_counter()
        hits = coll.search_vector(queries[i], k=k)
        lat_u.append(time.perf_counter() - t)
        cpu_u.append(time.thread_time() - c)
        found_u.append(np.asarray([h.id for h in hits], np.int64))
        w = f"{where} AND id <> {-1 - i}"
        c = time.thread_time()
        t = time.perf_counter()
        hits = coll.search_vector(queries[i], k=k, where=w)
        lat_f.append(time.perf_counter() - t)
        cpu_f.append(time.thread_time() - c)
        found_f.append(np.asarray([h.id for h in hits], np.int64))
    all_f = np.concatenate(found_f)
    u, f = percentiles(lat_u), percentiles(lat_f)
    cu, cf = percentiles(cpu_u), percentiles(cpu_f)
    return {
        "unfiltered": u,
        "filtered": f,
        "filtered_over_unfiltered_p50": round(f["p50_ms"] / u["p50_ms"], 2),
        # CPU time of the calling thread (FAISS and DuckDB run in it for one query): what an
        # unshared core would take; wall times suffer from other load on a shared machine
        "unfiltered_thread_cpu": cu,
        "filtered_thread_cpu": cf,
        "filtered_over_unfiltered_cpu_p50": round(cf["p50_ms"] / cu["p50_ms"], 2),
        "recall": round(recall(found_u, truth, k), 4),
        "filtered_recall": round(recall(found_f, truth_f, k), 4),
        "filtered_all_allowed": bool(np.isin(all_f, allowed).all()),
        "filtered_min_hits": int(min(len(x) for x in found_f)),
    }


# -- target 3: cold CLI -----------------------------------------------------------------------
# The torch path (VLMSEARCH_TEXT_ONNX=0, or no ONNX export): the collection's encoder.
COLD_DRIVER = r"""
import sys, time, os, json
t0 = time.perf_counter()
import vlmsearch.cli.app  # noqa: typer, rich
t_cli = time.perf_counter()
import numpy, pyarrow, pyarrow.parquet, duckdb, faiss  # noqa: storage and search libraries
t_libs = time.perf_counter()
import torch  # noqa
t_torch = time.perf_counter()
if sys.argv[3] == "open_clip":
    import open_clip  # noqa: imports torchvision and transformers too
t_enc_lib = time.perf_counter()
from vlmsearch import Collection
t_imports = time.perf_counter()
coll = Collection.open(sys.argv[1])
t_open = time.perf_counter()
enc = coll.encoder
t_model = time.perf_counter()
idx = coll.faiss_index
t_index = time.perf_counter()
vec = enc.encode_texts([sys.argv[2]])[0]
t_encode = time.perf_counter()
hits = coll.search_vector(vec, k=10)
t_search = time.perf_counter()
print(json.dumps({
    "cli_import_s": t_cli - t0, "numpy_pyarrow_duckdb_faiss_import_s": t_libs - t_cli,
    "torch_import_s": t_torch - t_libs, "encoder_library_import_s": t_enc_lib - t_torch,
    "vlmsearch_imports_s": t_imports - t_enc_lib,
    "open_s": t_open - t_imports, "model_load_s": t_model - t_open,
    "index_load_s": t_index - t_model, "text_encode_s": t_encode - t_index,
    "search_s": t_search - t_encode, "total_in_process_s": t_search - t0,
}))
"""

# The default path: the text tower's ONNX export (vlmsearch.models.onnx.text_tower), whose
# session loads in a thread while the index loads; torch must not be imported.
COLD_DRIVER_ONNX = r"""
import sys, time, os, json
t0 = time.perf_counter()
import vlmsearch.cli.app  # noqa: typer, rich
t_cli = time.perf_counter()
import numpy, pyarrow, pyarrow.parquet, duckdb, faiss  # noqa: storage and search libraries
t_libs = time.perf_counter()
import onnxruntime, tokenizers  # noqa
t_ort = time.perf_counter()
from vlmsearch import Collection
from vlmsearch.search.query import build_terms, query_vector
t_imports = time.perf_counter()
coll = Collection.open(sys.argv[1])
t_open = time.perf_counter()
terms = build_terms([sys.argv[2]])
enc = coll._query_encoder(terms)  # starts the ONNX session's thread, then loads the index
assert coll._encoder is None and enc is not None, "no ONNX export for this collection"
t_index = time.perf_counter()
tower = getattr(enc, "tower", enc)
tower.session  # waits for the session thread
t_session = time.perf_counter()
vec = query_vector(enc, terms)
t_encode = time.perf_counter()
hits = coll.search_vector(vec, k=10)
t_search = time.perf_counter()
assert "torch" not in sys.modules and "open_clip" not in sys.modules
print(json.dumps({
    "cli_import_s": t_cli - t0, "numpy_pyarrow_duckdb_faiss_import_s": t_libs - t_cli,
    "onnxruntime_tokenizers_import_s": t_ort - t_libs, "vlmsearch_imports_s": t_imports - t_ort,
    "open_s": t_open - t_imports,
    "index_load_while_session_loads_s": t_index - t_open,
    "session_wait_after_index_s": t_session - t_index,
    "text_encode_s": t_encode - t_session,
    "search_s": t_search - t_encode, "total_in_process_s": t_search - t0,
}))
"""


def time_cold(
    coll_path: Path, query: str, kind: str, runs: int, env: dict[str, str]
) -> dict[str, Any]:
    """Cold ``vlmsearch search`` walls and step breakdowns, ONNX (default) and torch paths."""
    py = sys.executable
    cmd = [py, "-m", "vlmsearch", "search", query, "-c", str(coll_path), "--json"]
    out: dict[str, Any] = {}
    for path, switch, driver in (("onnx", "1", COLD_DRIVER_ONNX), ("torch", "0", COLD_DRIVER)):
        penv = {**env, "VLMSEARCH_TEXT_ONNX": switch}
        w, proc = run_wall(cmd, penv)  # untimed: warms the page cache like a second run
        assert proc.returncode == 0, proc.stderr[-2000:]
        walls, parts, cpu = [], [], []
        for _ in range(runs):
            before = os.times()
            w, proc = run_wall(cmd, penv)
            after = os.times()
            assert proc.returncode == 0, proc.stderr[-2000:]
            walls.append(w)
            cpu.append(
                (after.children_user - before.children_user)
                + (after.children_system - before.children_system)
            )
            w2, proc2 = run_wall([py, "-c", driver, str(coll_path), query, kind], penv)
            assert proc2.returncode == 0, proc2.stderr[-2000:]
            parts.append(json.loads(proc2.stdout.strip().splitlines()[-1]))
        out[path] = {
            "search_wall_s": sorted(round(w, 3) for w in walls),
            "search_wall_median_s": round(float(np.median(walls)), 3),
            "search_cpu_median_s": round(float(np.median(cpu)), 3),
            "breakdown_median_s": {
                key: round(float(np.median([p[key] for p in parts])), 3) for key in parts[0]
            },
            "loadavg": loadavg(),
        }
        print(f"[cold] {coll_path} {path}: wall {out[path]['search_wall_s']} s", flush=True)
    return out


def run_wall(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - t, proc


RANDOM_CKPT = ":random-checkpoint"


def random_checkpoint(cache: Path, arch: str) -> str:
    """``ARCH:path`` of a checkpoint file holding ARCH's seeded random weights, written once.

    Loading it is the same work as loading released weights from a local file (no
    pretrained weights can be downloaded here), so the cold figures hold for them."""
    path = cache / f"{arch}-random.pt"
    if not path.is_file():
        import torch

        from vlmsearch.models.encoders import load_encoder

        cache.mkdir(parents=True, exist_ok=True)
        enc = load_encoder(arch)  # random init, seeded
        torch.save(enc.model.state_dict(), path)  # type: ignore[attr-defined]
    return f"{arch}:{path}"


def bench_cold(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from vlmsearch.models.encoders import load_encoder
    from vlmsearch.storage.ann import faiss_store
    from vlmsearch.storage.ann.plan import plan_index

    n, runs = args.cold_n, args.cold_runs
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_STATE_HOME"] = str(work / "state")
    py = sys.executable
    out: dict[str, Any] = {"n": n, "runs": runs, "models": {}}
    walls = []
    for _ in range(runs):
        w, proc = run_wall([py, "-m", "vlmsearch", "--help"], env)
        assert proc.returncode == 0, proc.stderr
        walls.append(w)
    out["help_wall_s"] = sorted(round(w, 3) for w in walls)
    w, proc = run_wall([py, "-c", "pass"], env)
    out["bare_python_s"] = round(w, 3)
    env.setdefault("VLMSEARCH_MODEL_CONFIGS", str(REPO / "tests" / "model_configs"))
    os.environ.setdefault("VLMSEARCH_MODEL_CONFIGS", env["VLMSEARCH_MODEL_CONFIGS"])
    for model in [m.strip() for m in args.cold_models.split(",") if m.strip()]:
        kind, _, name = model.partition("=")
        if name.endswith(RANDOM_CKPT):
            name = random_checkpoint(args.cache, name.removesuffix(RANDOM_CKPT))
        print(f"[cold] {model}: loading the encoder to make a collection ...", flush=True)
        enc = load_encoder(name, kind=kind)
        d = enc.dim
        coll_path = work / f"cold-{len(out['models'])}-{kind}"  # one per model
        allv = load_or_make_vectors(
            args.cache, n, d, args.clusters, args.noise, args.subspace, args.seed + 7
        )
        write_collection(coll_path, np.asarray(allv), encoder_spec=enc.spec, seed=args.seed)
        plan = plan_index("auto", n, d)
        index = faiss_store.build_index(plan, d, np.arange(n, dtype=np.int64), allv[:].astype("f4"))
        commit_index(coll_path, index, plan)
        from vlmsearch.models.onnx.text_tower import prepare_text_queries

        t = time.perf_counter()
        note = prepare_text_queries(enc)  # what `vlmsearch index` does once per model
        entry: dict[str, Any] = {"factory": plan.factory, "dim": d}
        entry["onnx_export_s"] = round(time.perf_counter() - t, 2)
        assert note is None, note
        del index, enc
        entry.update(time_cold(coll_path, args.cold_query, kind, runs, env))
        out["models"][model] = entry
    for existing in [Path(c) for c in args.cold_existing.split(",") if c]:
        manifest = json.loads((existing / "manifest.json").read_text())
        coll_kind = manifest["encoder"]["kind"]
        entry = {"encoder": manifest["encoder"]["name"], "images": manifest["counts"]["ok"]}
        entry.update(time_cold(existing, args.cold_query, coll_kind, runs, env))
        out["existing"] = {**out.get("existing", {}), str(existing): entry}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Search latency at scale and cold-CLI time for vlmsearch (issue 6).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sections", default="latency,cold", help="latency, cold, or both")
    p.add_argument("--n", type=int, default=1_000_000, help="vectors for the latency section")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=10, help="mixture components")
    p.add_argument("--noise", type=float, default=1.0, help="noise norm relative to centres")
    p.add_argument("--subspace", type=int, default=32, help="noise dimensions per cluster")
    p.add_argument("--queries", type=int, default=200, help="timed queries per kind")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kinds", default="flat,hnsw,ivf,auto")
    p.add_argument("--where", default=None, help="filter (default: keeps --where-fraction)")
    p.add_argument("--where-fraction", type=float, default=0.01)
    p.add_argument("--cold-n", type=int, default=100_000, help="vectors for the cold section")
    p.add_argument("--cold-runs", type=int, default=3)
    p.add_argument(
        "--cold-models",
        default="open_clip=ViT-B-32:random-checkpoint,open_clip=vlms-tiny",
        help="KIND=NAME encoders for the cold section (comma-separated); "
        "ARCH:random-checkpoint saves ARCH's random weights to a local checkpoint first",
    )
    p.add_argument("--cold-query", default="a photo of a dog on the beach")
    p.add_argument(
        "--cold-existing",
        default="",
        help="also time cold searches on these existing collections (comma-separated paths; "
        "indexed by `vlmsearch index`, so their text tower is exported)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache", type=Path, default=REPO / "benchmarks" / ".cache", help="vector cache"
    )
    p.add_argument("--work", type=Path, default=None, help="work folder (default: temporary)")
    p.add_argument("--json", type=Path, default=None, help="write all figures here")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --work: reuse its collection and the index committed there when the "
        "plan's factory matches (measure again without rebuilding)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="vlmsearch-bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_STATE_HOME"] = str(work / "state")
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(),
    }
    sections = {s.strip() for s in args.sections.split(",")}
    t0 = time.perf_counter()
    try:
        if "latency" in sections:
            res["latency"] = bench_latency(args, work)
        if "cold" in sections:
            res["cold"] = bench_cold(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["loadavg_end"] = loadavg()
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
