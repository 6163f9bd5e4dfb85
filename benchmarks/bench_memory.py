#!/usr/bin/env python
"""Peak memory of `vlmsearch index` as the corpus grows (issue 6, target 5).

For each size N the script builds a folder of N images by hard-linking the source
folder's files under new names (``c001_<name>``, ``c002_<name>``, ...; no bytes are
copied), runs ``python -m vlmsearch index`` on it in a fresh process, and polls the
process tree every ``--interval`` seconds:

- ``main_rss``: resident set of the indexing process itself;
- ``tree_pss``: proportional set size summed over the process and its decoding workers
  (shared pages, such as the model weights a forked worker inherits, are split between
  the processes that map them instead of being counted once per process);
- ``tree_rss``: plain RSS summed over the tree (counts shared pages several times; an
  upper bound);
- ``max_rss_any_process``: the kernel's high-water mark of the largest single process
  (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, what ``/usr/bin/time -v`` prints as
  "Maximum resident set size").

Bounded streaming means these stay nearly flat from 1k to 10k images: vectors are
committed every ``--commit-every`` images, so only the metadata table and the final FAISS
index (N x 512 floats) grow with N.

    python benchmarks/bench_memory.py ../shared/data/imagenet-sample --sizes 1000,10000 \\
        --json benchmarks/results-memory-2026-11-22.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_embed import ARCH, Phase, machine, random_checkpoint  # noqa: E402


def build_folder(src: Path, n: int, out: Path) -> int:
    """``n`` images under ``out``, hard links (or copies across file systems) to ``src``."""
    names = sorted(p.name for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    out.mkdir(parents=True)
    for i in range(n):
        copy, name = divmod(i, len(names))
        target = out / f"c{copy:03d}_{names[name]}"
        try:
            os.link(src / names[name], target)
        except OSError:
            shutil.copy2(src / names[name], target)
    return n


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, stack = _children(), [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Poller(threading.Thread):
    """Samples main RSS, tree PSS and tree RSS of a process every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = {"main_rss": 0, "tree_pss": 0, "tree_rss": 0, "processes": 0}
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            main = _kb(f"/proc/{self.pid}/status", "VmRSS:")
            pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
            for k, v in (("main_rss", main), ("tree_pss", pss), ("tree_rss", rss)):
                self.peak[k] = max(self.peak[k], v)
            self.peak["processes"] = max(self.peak["processes"], len(pids))
            self.samples += 1
            self.done.wait(self.interval)


def measure(folder: Path, coll: Path, model: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "vlmsearch", "index", str(folder), "--collection", str(coll),
        "--model", model, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--commit-every", str(args.commit_every), "--device", "cpu", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with Phase() as ph:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        poller = Poller(proc.pid, args.interval)
        poller.start()
        out, err = proc.communicate()
        poller.done.set()
        poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"vlmsearch index failed:\n{err.decode()[-3000:]}")
    rep = json.loads(out)
    mb = 1024.0
    return {
        "command": " ".join(cmd),
        "images": rep["encoded"],
        "errors": rep["errors"],
        "index": rep["index_factory"],
        "images_per_s_encode_loop": round(rep["encoded"] / rep["encode_seconds"], 3),
        "phase": ph.to_json(),
        "peak_main_rss_mb": round(poller.peak["main_rss"] / mb, 1),
        "peak_tree_pss_mb": round(poller.peak["tree_pss"] / mb, 1),
        "peak_tree_rss_mb": round(poller.peak["tree_rss"] / mb, 1),
        "max_processes": poller.peak["processes"],
        "samples": poller.samples,
        "collection_mb": round(
            sum(f.stat().st_size for f in coll.rglob("*") if f.is_file()) / 1e6, 1
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="folder of JPEGs to replicate")
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated image counts")
    ap.add_argument(
        "--model",
        default=None,
        help=f"model string (default: a random-init {ARCH} checkpoint saved under .cache)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--commit-every", type=int, default=1024)
    ap.add_argument("--interval", type=float, default=0.5, help="polling period, seconds")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    model = args.model or f"{ARCH}:{random_checkpoint()}"
    src = args.folder.expanduser().resolve()
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "argv": sys.argv,
        "machine": machine(),
        "settings": {
            "model": model,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "commit_every": args.commit_every,
        },
        "runs": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            folder = tmp / f"images-{n}"
            build_folder(src, n, folder)
            run = measure(folder, tmp / f"coll-{n}", model, args)
            run["max_rss_any_process_mb_so_far"] = round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1
            )
            result["runs"].append(run)
            print(
                f"{n:>7} images: main RSS {run['peak_main_rss_mb']} MB, tree PSS "
                f"{run['peak_tree_pss_mb']} MB, tree RSS {run['peak_tree_rss_mb']} MB, "
                f"{run['images_per_s_encode_loop']} img/s, {run['phase']['wall_s']} s, other "
                f"processes {run['phase']['other_processes_cores']} cores",
                flush=True,
            )
            shutil.rmtree(folder)
            shutil.rmtree(tmp / f"coll-{n}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print("wrote", args.json)


if __name__ == "__main__":
    main()
