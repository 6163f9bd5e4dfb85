"""Load test for `vlmsearch serve`: many concurrent clients on loopback for a fixed time.

Starts `python -m vlmsearch serve` in its own process (so the load generator does not share
its interpreter), then runs CLIENTS asyncio clients that loop over a request mix until
SECONDS have passed: text searches with varied queries (and a filter on some), "more like
this" by id, and thumbnails. Prints throughput, p50/p99 latency and errors, per kind and
overall; --json writes them to a file.

    VLMSEARCH_MODEL_CONFIGS=tests/model_configs \\
        python benchmarks/bench_serve.py --clients 200 --seconds 30 --images 500
    python benchmarks/bench_serve.py --collection photos/.vlmsearch   # an existing collection
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORDS = "red green blue yellow square circle photo cat dog sky tree car small large".split()


def build(root: Path, n: int, model: str) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_images
    from vlmsearch import Collection
    from vlmsearch.ingest.options import IngestOptions

    make_images(root, n)
    Collection.index(root, model=model, options=IngestOptions(workers=0))
    return root / ".vlmsearch"


def relabel(coll: Path, model: str, tmp: Path) -> Path:
    """A hard-linked copy of ``coll`` whose manifest names ``model``'s encoder (same dim), so
    a synthetic-vector collection can be served; the original is not touched (only the copy's
    manifest is rewritten, as a new file)."""
    sys.path.insert(0, str(REPO))
    from vlmsearch.models.encoders import load_encoder

    out = tmp / "relabelled"
    subprocess.run(["cp", "-al", str(coll), str(out)], check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    spec = load_encoder(model).spec
    if spec["dim"] != manifest["dim"]:
        raise SystemExit(f"{model} has dim {spec['dim']}, the collection {manifest['dim']}")
    manifest["encoder"] = spec
    (out / "manifest.json").unlink()  # a new file: the hard link keeps the original's
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEFAULT_MIX = "search:4,search+where:1,similar:2,thumb:3"


def parse_mix(text: str) -> dict[str, float]:
    """``kind:weight,...`` over search, search+where, similar and thumb."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition(":")
        if kind not in ("search", "search+where", "similar", "thumb"):
            raise SystemExit(f"unknown request kind {kind!r} in --mix")
        mix[kind] = float(weight or 1)
    return mix


async def client(
    http: httpx.AsyncClient,
    ids: list[int],
    deadline: float,
    rng: random.Random,
    out: list,
    mix: dict[str, float],
) -> None:
    kinds, weights = list(mix), list(mix.values())
    while time.perf_counter() < deadline:
        kind = rng.choices(kinds, weights)[0]
        t0 = time.perf_counter()
        try:
            if kind.startswith("search"):
                body = {"text": " ".join(rng.sample(WORDS, 3)), "k": rng.choice([5, 10, 20])}
                if kind == "search+where":
                    body["where"] = f"width >= {rng.randint(40, 44)}"
                r = await http.post("/api/collections/bench/search", json=body)
            elif kind == "similar":
                r = await http.get(f"/api/collections/bench/similar/{rng.choice(ids)}?k=10")
            else:
                r = await http.get(f"/api/collections/bench/thumbs/{rng.choice(ids)}")
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append((kind, time.perf_counter() - t0, ok))


def summarise(rows: list, seconds: float) -> dict:
    def stats(sel: list) -> dict:
        lat = np.asarray([r[1] for r in sel]) * 1000
        return {
            "requests": len(sel),
            "errors": sum(not r[2] for r in sel),
            "rps": round(len(sel) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        }

    kinds = sorted({r[0] for r in rows})
    return {"all": stats(rows), **{k: stats([r for r in rows if r[0] == k]) for k in kinds}}


async def load(
    base: str, ids: list[int], clients: int, seconds: float, seed: int, mix: dict[str, float]
) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        # warm up: thumbnails made once, the model's first call, the index and vectors loaded
        if "thumb" in mix:
            for i in ids[: min(len(ids), 50)]:
                await http.get(f"/api/collections/bench/thumbs/{i}")
        if "search" in mix or "search+where" in mix:
            await http.post("/api/collections/bench/search", json={"text": "warm up"})
        if "similar" in mix:
            for i in ids[:20]:
                await http.get(f"/api/collections/bench/similar/{i}?k=10")
        rows: list = []
        start = time.perf_counter()
        deadline = start + seconds
        rngs = [random.Random(seed + i) for i in range(clients)]
        await asyncio.gather(*(client(http, ids, deadline, r, rows, mix) for r in rngs))
        elapsed = time.perf_counter() - start
    return {"elapsed_s": round(elapsed, 1), **summarise(rows, elapsed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--images", type=int, default=500, help="size of the generated collection")
    ap.add_argument("--model", default="vlms-tiny")
    ap.add_argument("--collection", type=Path, help="serve this collection instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help="request kinds and weights; e.g. 'similar' alone with --clients 1 gives the warm "
        "latency of one vector search through HTTP on a collection without a text encoder",
    )
    ap.add_argument(
        "--as-model",
        help="serve a hard-linked copy of --collection whose manifest names this model "
        "(for synthetic-vector collections, which have no encoder; use --mix similar)",
    )
    args = ap.parse_args()
    mix = parse_mix(args.mix)
    os.environ.setdefault("VLMSEARCH_MODEL_CONFIGS", str(REPO / "tests" / "model_configs"))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.collection or build(Path(tmp) / "photos", args.images, args.model)
        if args.as_model:
            path = relabel(path, args.as_model, Path(tmp))
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": tmp}
        cmd = [sys.executable, "-m", "vlmsearch", "serve", f"bench={path}", "--port", str(port),
               "--device", "cpu", "--max-connections", str(args.clients + 16)]  # fmt: skip
        server = subprocess.Popen(cmd, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    info = httpx.get(base + "/api/collections/bench", timeout=1).json()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                raise SystemExit("the server did not start")
            rng = random.Random(args.seed)
            ids = sorted(rng.sample(range(int(info["images"])), min(int(info["images"]), 500)))
            result = asyncio.run(load(base, ids, args.clients, args.seconds, args.seed, mix))
        finally:
            server.terminate()
            server.wait(30)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "clients": args.clients,
        "mix": mix,
        "images": int(info["images"]),
        "model": info["model"],
        **result,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
