#!/usr/bin/env python
"""``vlmsearch index --ray auto`` against the single-process path (issue 18), side by side
in one run.

Each path indexes the same folder into a fresh collection with the same model and batch
size, as its own command line in a fresh process (``--json``), alternating when
``--repeat`` > 1. Reported per path: images/s over the encode stage (``encode_seconds``:
for Ray, from the first task to the last commit, the runtime's start and the actors'
model loading included) and over the whole command, and the overhead ratio (one
process's rate over Ray's). The machine's load is recorded, since on a small shared
machine the figures are only as good as the machine was idle.

    python benchmarks/bench_ray.py ../shared/data/imagenet-sample \\
        --json benchmarks/results-ray-2026-12-03.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_core import loadavg, machine_busy_seconds, machine_info  # noqa: E402


def run_index(folder: Path, collection: Path, args: argparse.Namespace, ray: bool) -> dict:
    """One ``vlmsearch index`` command; its JSON report, wall time and machine load."""
    cmd = [sys.executable, "-m", "vlmsearch", "index", str(folder), "--collection",
           str(collection), "--json", "--batch-size", str(args.batch_size),
           *shlex.split(args.model_args)]  # fmt: skip
    if ray:
        cmd += ["--ray", "auto"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    busy0, t0 = machine_busy_seconds(), time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    busy1 = machine_busy_seconds()
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    rep = json.loads(out.stdout)
    return {
        "command": " ".join(cmd[1:]),
        "wall_seconds": round(wall, 2),
        "encoded": rep["encoded"],
        "encode_seconds": round(rep["encode_seconds"], 2),
        "load_seconds": round(rep["load_seconds"], 2),
        "encode_images_per_second": rep["images_per_second"],
        "wall_images_per_second": round(rep["encoded"] / wall, 2),
        "workers": rep.get("workers", {}),
        "machine_busy_cores": round((busy1 - busy0) / wall, 2) if busy0 and busy1 else None,
        "loadavg_end": loadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument(
        "--model-args",
        default="--encoder asif",
        help="vlmsearch index model options (default: the offline ASIF default)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res: dict[str, Any] = {"machine": machine_info(), "folder": str(args.folder), "runs": []}
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        for i in range(args.repeat):
            for ray in (False, True):
                coll = work / f"{'ray' if ray else 'local'}-{i}"
                r = run_index(args.folder, coll, args, ray)
                r["path"] = "ray" if ray else "local"
                res["runs"].append(r)
                print(json.dumps(r), flush=True)
                shutil.rmtree(coll, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["summary"] = summary(res["runs"])
    print(json.dumps(res["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best rate of each path, and one process's rate over Ray's (> 1: Ray is slower)."""

    def best(path: str, key: str) -> float:
        return max(r[key] for r in runs if r["path"] == path)

    out: dict[str, Any] = {}
    for key in ("encode_images_per_second", "wall_images_per_second"):
        local, ray = best("local", key), best("ray", key)
        out[key] = {"local": local, "ray": ray, "overhead_ratio": round(local / ray, 2)}
    return out


if __name__ == "__main__":
    main()
