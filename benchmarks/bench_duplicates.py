#!/usr/bin/env python
"""Near-duplicate detection (issue 19): ``vlmsearch.search.duplicates.find_duplicates``.

``scale``: N synthetic float16 vectors (a Gaussian mixture, ``synthetic_collection``) with
planted near-copies (a row plus small noise, cosine ~0.99; groups of 2 and 3); time, peak
RSS, and recall/precision of the planted pairs, at several N, so that the time per row
shows whether the work grows as N (range search over an IVF index) or N^2.

``quality``: a folder of real JPEGs plus generated variants of some of them (resized 50%,
JPEG quality 30, 5% crop, horizontal flip, colour shift), indexed with a chosen model (the
offline ASIF default by default); precision and recall of the groups at several
thresholds, and the similarity of each variant to its original.

Run ``python benchmarks/bench_duplicates.py scale|quality --help``. Results:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import loadavg  # noqa: E402
from synthetic_collection import subspace_mixture  # noqa: E402

VARIANTS = ("resize50", "jpeg30", "crop5", "flip", "colour")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident set size now (MB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """The highest RSS seen every 50 ms while in the ``with`` block: the peak of one call,
    which ``ru_maxrss`` (the whole process's) cannot give after data generation."""

    def __enter__(self) -> RssSampler:
        import threading

        self.peak, self.base, self._stop = 0.0, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def planted(n: int, d: int, copies: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """float16 (n, d) vectors whose last rows are near-copies of earlier ones, and the
    planted pairs (positions, a < b) that a detector should find."""
    rng = np.random.default_rng(seed)
    base = n - copies
    x = np.empty((n, d), np.float16)
    for lo in range(0, base, 200_000):
        m = min(200_000, base - lo)
        x[lo : lo + m] = subspace_mixture(m, d, 1000, 1.0, 64, rng).astype(np.float16)
    # a third of the originals get two copies (groups of 3)
    originals = rng.choice(base, copies * 3 // 4, replace=False)
    sources = np.concatenate([originals, originals[: copies - len(originals)]])
    noise = rng.standard_normal((copies, d)).astype(np.float32)
    noise *= 0.12 / np.linalg.norm(noise, axis=1, keepdims=True)
    y = x[sources].astype(np.float32) + noise
    x[base:] = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float16)
    groups: dict[int, list[int]] = {}
    for k, s in enumerate(sources.tolist()):
        groups.setdefault(s, [s]).append(base + k)
    pairs = {(a, b) for g in groups.values() for a in g for b in g if a < b}
    return x, pairs


def found_pairs(groups: list[Any]) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for g in groups for a in g.ids for b in g.ids if a != b}


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    from vlmsearch.search.duplicates import EXACT_MAX, find_duplicates

    out = []
    for n in args.n:
        x, truth = planted(n, args.dim, max(2, n // 500), args.seed)
        with RssSampler() as rss:
            t = time.perf_counter()
            groups = find_duplicates(np.arange(n), x, args.threshold, nprobe=args.nprobe)
            secs = time.perf_counter() - t
        got = found_pairs(groups)
        hit = len(got & truth)
        row = {
            "n": n,
            "dim": args.dim,
            "planted_pairs": len(truth),
            "found_pairs": len(got),
            "recall": round(hit / max(len(truth), 1), 4),
            "precision": round(hit / max(len(got), 1), 4),
            "groups": len(groups),
            "seconds": round(secs, 2),
            "us_per_row": round(1e6 * secs / n, 1),
            "vectors_mb": round(x.nbytes / 2**20, 1),
            "rss_mb_before": round(rss.base, 1),
            "peak_rss_mb_during": round(rss.peak, 1),
            "peak_rss_mb_process": round(peak_rss_mb(), 1),
            "path": "exact" if n <= EXACT_MAX else f"ivf nprobe={args.nprobe}",
            "loadavg": loadavg(),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
        del x
    return {"scale": out}


def make_variants(src: Path, dst: Path, count: int, seed: int) -> dict[str, str]:
    """Copy the JPEGs of ``src`` to ``dst`` and add variants of ``count`` of them;
    returns variant file name -> original file name."""
    from PIL import Image, ImageEnhance, ImageOps

    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    dst.mkdir(parents=True, exist_ok=True)
    for p in files:
        shutil.copy2(p, dst / p.name)
    rng = np.random.default_rng(seed)
    truth = {}
    for p in rng.choice(files, min(count, len(files)), replace=False):
        im = Image.open(p).convert("RGB")
        w, h = im.size
        made = {
            "resize50": im.resize((max(1, w // 2), max(1, h // 2))),
            "jpeg30": im,
            "crop5": im.crop((w // 40, h // 40, w - w // 40, h - h // 40)),
            "flip": ImageOps.mirror(im),
            "colour": ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(1.3),
        }
        for name, v in made.items():
            out = dst / f"{p.stem}__{name}.jpg"
            v.save(out, quality=30 if name == "jpeg30" else 90)
            truth[out.name] = p.name
    return truth


def _truth_from_names(folder: Path) -> dict[str, str]:
    """variant name -> original name, from the ``STEM__VARIANT.jpg`` names written here."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    by_stem = {n.rsplit(".", 1)[0]: n for n in files if "__" not in n}
    return {n: by_stem[n.split("__")[0]] for n in files if "__" in n}


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    from vlmsearch import Collection
    from vlmsearch.search.duplicates import find_duplicates

    work = Path(args.work)
    folder = work / "images"
    if args.reuse and (folder / ".vlmsearch").is_dir():
        truth = _truth_from_names(folder)  # indexed by an earlier run: nothing re-encoded
    else:
        truth = make_variants(Path(args.src), folder, args.originals, args.seed)
    t = time.perf_counter()
    coll = Collection.index(folder, model=args.model)
    index_s = time.perf_counter() - t
    table = coll.reader.vectors
    rows = coll.rows(table.ids)
    name_of = {i: Path(r["path"]).name for i, r in rows.items()}
    id_of = {v: k for k, v in name_of.items()}
    true_pairs = set()
    for var, orig in truth.items():
        a, b = id_of[var], id_of[orig]
        true_pairs.add((min(a, b), max(a, b)))
    siblings = {}  # variants of one original are duplicates of each other too
    for var, orig in truth.items():
        siblings.setdefault(orig, [id_of[orig]]).append(id_of[var])
    all_true = {(min(a, b), max(a, b)) for g in siblings.values() for a in g for b in g if a != b}
    v = table.dense(table.ids)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    pos = {int(i): k for k, i in enumerate(table.ids.tolist())}
    per_variant: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for var, orig in truth.items():
        kind = var.rsplit("__", 1)[1].removesuffix(".jpg")
        per_variant[kind].append(float(v[pos[id_of[var]]] @ v[pos[id_of[orig]]]))
    sims = v @ v.T
    related = np.eye(len(v), dtype=bool)
    for a, b in all_true:
        related[pos[a], pos[b]] = related[pos[b], pos[a]] = True
    unrelated = sims[~related]
    results = []
    for thr in args.thresholds:
        groups = find_duplicates(table.ids, table.vectors, thr)
        got = found_pairs(groups)
        by_kind = {k: [0, 0] for k in VARIANTS}
        for var, orig in truth.items():
            kind = var.rsplit("__", 1)[1].removesuffix(".jpg")
            a, b = id_of[var], id_of[orig]
            by_kind[kind][0] += (min(a, b), max(a, b)) in got
            by_kind[kind][1] += 1
        results.append(
            {
                "threshold": thr,
                "groups": len(groups),
                "pair_recall_variant_original": round(len(got & true_pairs) / len(true_pairs), 4),
                "pair_precision": round(len(got & all_true) / max(len(got), 1), 4),
                "found_pairs": len(got),
                "recall_by_variant": {k: round(h / max(t, 1), 3) for k, (h, t) in by_kind.items()},
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return {
        "model": args.model,
        "encoder": coll.manifest["encoder"].get("name"),
        "images": len(table.ids),
        "originals_with_variants": args.originals,
        "index_seconds": round(index_s, 1),
        "variant_similarity": {
            k: {"min": round(min(s), 4), "median": round(float(np.median(s)), 4)}
            for k, s in per_variant.items()
            if s
        },
        "unrelated_similarity": {
            "max": round(float(unrelated.max()), 4),
            "p99.99": round(float(np.quantile(unrelated, 0.9999)), 4),
            "p99": round(float(np.quantile(unrelated, 0.99)), 4),
        },
        "thresholds": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--threshold", type=float, default=0.94)
    s.add_argument("--nprobe", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("quality")
    q.add_argument("--src", default="../shared/data/imagenet-sample")
    q.add_argument("--work", default="/tmp/bench-dups")
    q.add_argument("--originals", type=int, default=100)
    q.add_argument("--model", default="asif")
    q.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.94, 0.97, 0.99, 0.999]
    )
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--reuse", action="store_true", help="Reuse the folder indexed last time.")
    for sp_ in (s, q):
        sp_.add_argument("--out", help="Write the results as JSON here.")
    args = p.parse_args()
    result = run_scale(args) if args.cmd == "scale" else run_quality(args)
    result.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), argv=sys.argv[1:])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
