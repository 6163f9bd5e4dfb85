"""Issue 15, "Slow": cold CLI timings before and after, measured side by side in one run.

Every figure is the wall time of a fresh ``python -m vlmsearch ...`` process (imports,
model loading and all), run alternately with the code under ``--before`` (a checkout of
the tree before the fixes: ``git archive 8d38631 vlmsearch tests/model_configs | tar -x``)
and this tree. Both share one cache folder, so the ONNX exports and ASIF anchors made by
the first index run serve both (the "before" code already had the text export).

Sections:
1. ``index DIR`` with nothing to do: vlms-tiny and the offline ASIF default, 30 images.
2. ``search --image Q`` cold on a 100k-vector collection with ViT-B-32's spec (random
   init: the speed of the real model; vectors from synthetic_collection.py, auto index).
3. ``classify`` with 100 labels x 80 templates on 1% (1,000 rows) of that collection:
   before, after (cache cold), after (repeat).
4. ``--rerank region`` with the teacher on CPU, default depth, ViT-B-32 on 30 images:
   before (50 -> all 30 reranked) and after (10), with the printed estimate.

Usage: python benchmarks/bench_issue15.py --before /tmp/base --work /tmp/b15 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent
sys.path.insert(0, str(AFTER))
sys.path.insert(0, str(HERE))


def run(tree: Path, args: list[str], env: dict[str, str], timeout: int = 900) -> dict:
    configs = str(tree / "tests/model_configs")
    e = {**env, "PYTHONPATH": str(tree), "VLMSEARCH_MODEL_CONFIGS": configs}
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "vlmsearch", *args], capture_output=True, text=True, env=e,
        timeout=timeout, cwd=tree,  # `-m` puts the cwd first on sys.path
    )  # fmt: skip
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{args} failed in {tree}:\n{p.stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "stdout": p.stdout, "stderr": p.stderr}


def draw(root: Path, n: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for s in (AFTER / "vlmsearch/samples").glob("*.jpg"):
        (root / s.name).write_bytes(s.read_bytes())
    for i in range(n):
        im = Image.new("RGB", (320, 240), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x, y = rng.integers(0, 280), rng.integers(0, 200)
            d.ellipse((x, y, x + 40, y + 40), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        im.save(root / f"drawn{i:03d}.png")


def side_by_side(before: Path, args: list[str], env: dict[str, str], reps: int) -> dict:
    out: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(reps):
        for name, tree in (("before", before), ("after", AFTER)):
            out[name].append(run(tree, args, env)["wall_s"])
    return {k: {"runs": v, "median": float(np.median(v))} for k, v in out.items()}


def build_100k(path: Path, n: int, env: dict[str, str]) -> None:
    """Synthetic vectors under ViT-B-32's spec, an auto index, and both query exports."""
    os.environ.update(env)
    from synthetic_collection import commit_index, load_or_make_vectors, write_collection

    from vlmsearch.ingest.query_exports import prepare_query_exports
    from vlmsearch.models.encoders import load_encoder
    from vlmsearch.models.lazy_encoder import LazyEncoder
    from vlmsearch.storage.ann import faiss_store
    from vlmsearch.storage.ann.plan import plan_index

    enc = load_encoder("ViT-B-32", device="cpu")
    # bench_search.py's defaults: 10 clusters, noise 1.0 in a 32-dim subspace each
    vecs = np.asarray(load_or_make_vectors(path.parent / "vectors", n, enc.dim, 10, 1.0, 32, 0))
    write_collection(path, vecs, enc.spec)
    plan = plan_index("auto", n, enc.dim)
    index = faiss_store.build_index(plan, enc.dim, np.arange(n), vecs.astype(np.float32))
    commit_index(path, index, plan)
    notes = prepare_query_exports(LazyEncoder.ready(enc))
    assert not notes, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sections", default="reindex,image,classify,region")
    ap.add_argument("--merge", action="store_true", help="update --json, keep other sections")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = a.work.resolve()
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(work / "cache"),
        "XDG_STATE_HOME": str(work / "state"),
        "HF_HUB_OFFLINE": "1",
    }
    sections = a.sections.split(",")
    res: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_before": os.getloadavg(),
    }
    imgs = work / "imgs"
    if not imgs.exists():
        draw(imgs, 23)
    if "reindex" in sections:
        models = (("vlms-tiny", ["--model", "vlms-tiny"]), ("asif", ["--encoder", "asif"]))
        for label, extra in models:
            folder = work / f"reindex-{label}"
            if not folder.exists():
                folder.mkdir(parents=True)
                for f in imgs.iterdir():
                    (folder / f.name).write_bytes(f.read_bytes())
                run(AFTER, ["index", str(folder), *extra, "-q"], env)
            r = side_by_side(a.before, ["index", str(folder), "-q"], env, a.reps)
            for name, tree in (("before", a.before), ("after", AFTER)):
                rep = json.loads(run(tree, ["index", str(folder), "--json"], env)["stdout"])
                r[name]["reported_s"] = round(rep["seconds"], 2)
            res[f"reindex_{label}"] = r
            print(label, r, flush=True)
    coll = work / "coll100k"
    if ("image" in sections or "classify" in sections) and not (coll / "manifest.json").exists():
        build_100k(coll, a.n, env)
    query = str(imgs / "cat.jpg")
    if "image" in sections:
        res["search_image_100k"] = side_by_side(
            a.before, ["search", "--image", query, "-c", str(coll), "-k", "10"], env, a.reps
        )
        print("image", res["search_image_100k"], flush=True)
    if "classify" in sections:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        labels = work / "labels.txt"
        labels.write_text("\n".join(IMAGENET_CLASSNAMES[:100]) + "\n")
        args = ["classify", "--labels-file", str(labels), "-c", str(coll),
                "--where", "width >= 1982", "--json"]  # fmt: skip
        out = {"before": run(a.before, args, env)["wall_s"]}
        label_cache = work / "cache" / "vlmsearch" / "label-embeddings"
        for f in label_cache.glob("*.npy") if label_cache.exists() else []:
            f.unlink()
        out["after_first"] = run(AFTER, args, env)["wall_s"]
        out["after_repeat"] = run(AFTER, args, env)["wall_s"]
        res["classify_100x80"] = out
        print("classify", out, flush=True)
    if "region" in sections:
        folder = work / "region-vitb32"
        if not folder.exists():
            folder.mkdir(parents=True)
            for f in imgs.iterdir():
                (folder / f.name).write_bytes(f.read_bytes())
            run(AFTER, ["index", str(folder), "--model", "ViT-B-32", "-q"], env)
        args = ["search", "a cat", "-c", str(folder), "-k", "30", "--rerank", "region", "--json"]
        out = {}
        for name, tree in (("after", AFTER), ("before", a.before)):
            r = run(tree, args, env, timeout=3600)
            hits = json.loads(r["stdout"])
            out[name] = {
                "wall_s": r["wall_s"],
                "reranked": sum(1 for h in hits if "rerank" in (h.get("scores") or {})),
            }
            m = re.search(r"about (\d+) s for (\d+) candidates", r["stderr"])
            if m:
                out[name]["estimate_s"] = int(m.group(1))
        res["region_teacher_cpu"] = out
        print("region", out, flush=True)
    res["load_after"] = os.getloadavg()
    if a.json:
        if a.merge and a.json.is_file():
            res = {**json.loads(a.json.read_text()), **res}
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
