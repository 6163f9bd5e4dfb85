#!/usr/bin/env python
"""Embedding throughput of `vlmsearch index` against clip-retrieval's `inference` (issue 6,
target 1), side by side in one run.

Both tools embed the same JPEG folder with the same ViT-B-32 checkpoint (random
initialisation saved to disk: the compute is that of the released model), the same batch
size and the same number of decoding workers, each as its own command line in a fresh
process. The script reports

- images/s of each, over the whole command (process start, model load, decoding,
  encoding, writing) and over its encoding loop alone (vlmsearch's ``encode_seconds``;
  clip-retrieval's summed per-batch ``total_duration``), and the ratios;
- the model-only forward throughput on ready tensors (``encode_pixels`` on random
  tensors, same batch size), measured before and after the tool runs, and the fraction
  of it vlmsearch's encoding loop reaches;
- the cosine of vlmsearch's stored embeddings (and clip-retrieval's) to open_clip's
  reference preprocessing (``create_model_and_transforms``'s preprocess on the PIL image);
- with ``--fast-decode``, the same for ``vlmsearch index --fast-decode`` (JPEG draft
  mode), plus the decode-only cost per image with and without draft mode;
- the CPU time other processes used during each timed phase (from /proc/stat), since
  figures on a shared machine are only as good as the machine was idle.

clip-retrieval runs from its own virtual environment: create it with
``benchmarks/clip_retrieval_env.sh`` (or pass ``--skip-clip-retrieval``).

    python benchmarks/bench_embed.py ../shared/data/imagenet-sample --fast-decode \\
        --json benchmarks/results-embed-2026-11-22.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
CLIP_VENV = HERE / ".venv-clip-retrieval"
ARCH = "ViT-B-32"


# -- helpers ------------------------------------------------------------------------------------
def random_checkpoint(arch: str = ARCH, cache: Path = CACHE) -> Path:
    """A random-init open_clip checkpoint on disk (seeded, cached), loadable by any tool."""
    path = cache / f"{arch.lower()}-random-init-seed0.pt"
    if not path.is_file():
        import open_clip
        import torch

        torch.manual_seed(0)
        model = open_clip.create_model(arch)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def _busy_jiffies() -> int:
    """CPU time all processes used so far (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


class Phase:
    """Wall time of a phase, our CPU time in it, and the CPU other processes took."""

    def __enter__(self) -> Phase:
        self.t0 = time.perf_counter()
        self.busy0 = _busy_jiffies()
        self.self0 = resource.getrusage(resource.RUSAGE_SELF)
        self.kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        tick = os.sysconf("SC_CLK_TCK")
        busy = (_busy_jiffies() - self.busy0) / tick
        s, k = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        ours = (
            s.ru_utime
            + s.ru_stime
            - self.self0.ru_utime
            - self.self0.ru_stime
            + k.ru_utime
            + k.ru_stime
            - self.kids0.ru_utime
            - self.kids0.ru_stime
        )
        self.cpu_s = ours
        self.other_cores = max(0.0, busy - ours) / self.wall if self.wall > 0 else 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall, 3),
            "our_cpu_s": round(self.cpu_s, 2),
            "other_processes_cores": round(self.other_cores, 3),
        }


def limited_folder(src: Path, limit: int | None, tmp: Path) -> Path:
    """``src`` itself, or a folder of symlinks to its first ``limit`` images (sorted)."""
    if not limit:
        return src
    out = tmp / "images"
    out.mkdir()
    names = sorted(p.name for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    for name in names[:limit]:
        (out / name).symlink_to(src / name)
    return out


def run_vlmsearch(
    folder: Path, ckpt: Path, coll: Path, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "vlmsearch", "index", str(folder), "--collection", str(coll),
        "--model", f"{ARCH}:{ckpt}", "--batch-size", str(args.batch_size),
        "--workers", str(args.workers), "--device", "cpu", "--json", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with Phase() as ph:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"vlmsearch index failed:\n{proc.stderr[-3000:]}")
    rep = json.loads(proc.stdout)
    n = int(rep["encoded"])
    return {
        "command": " ".join(cmd),
        "images": n,
        "errors": rep["errors"],
        "phase": ph.to_json(),
        "images_per_s_command": round(n / ph.wall, 3),
        "encode_loop_s": round(rep["encode_seconds"], 3),
        "images_per_s_encode_loop": round(n / rep["encode_seconds"], 3),
    }


def clip_retrieval_command(
    folder: Path, ckpt: Path, out: Path, args: argparse.Namespace
) -> tuple[list[str], dict[str, str]]:
    """clip-retrieval's ``inference`` command line and environment (CPU only) for the
    folder, checkpoint, batch size and workers; bench_cpu_index.py runs the same."""
    exe = Path(args.clip_venv) / "bin" / "clip-retrieval"
    if not exe.exists():
        raise SystemExit(
            f"{exe} not found: run benchmarks/clip_retrieval_env.sh first "
            "(or pass --skip-clip-retrieval)"
        )
    # all_clip's open_clip loader splits "ARCH/CHECKPOINT" at the first slash; an absolute
    # checkpoint path therefore follows the architecture after one more slash.
    cmd = [
        str(exe), "inference", "--input_dataset", str(folder), "--output_folder", str(out),
        "--clip_model", f"open_clip:{ARCH}/{ckpt}", "--batch_size", str(args.batch_size),
        "--num_prepro_workers", str(args.workers), "--enable_text", "False",
        "--enable_metadata", "False",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    return cmd, env


def run_clip_retrieval(
    folder: Path, ckpt: Path, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    cmd, env = clip_retrieval_command(folder, ckpt, out, args)
    with Phase() as ph:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"clip-retrieval inference failed:\n{proc.stderr[-3000:]}")
    stats: dict[str, float] = {}
    for f in sorted((out / "stats").glob("*.json")):
        for k, v in json.loads(f.read_text()).items():
            stats[k] = stats.get(k, 0.0) + float(v)
    n = int(stats.get("sample_count", 0))
    loop = stats.get("total_duration", float("nan"))
    return {
        "command": " ".join(cmd),
        "images": n,
        "phase": ph.to_json(),
        "images_per_s_command": round(n / ph.wall, 3),
        "encode_loop_s": round(loop, 3),
        "images_per_s_encode_loop": round(n / loop, 3),
        "read_wait_s": round(stats.get("read_duration", float("nan")), 3),
        "inference_s": round(stats.get("inference_duration", float("nan")), 3),
    }


def model_only(encoder: Any, batch_size: int, batches: int) -> dict[str, Any]:
    """``encode_pixels`` on ready random tensors: one warm-up batch, then ``batches``."""
    import torch

    x = torch.randn(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    encoder.encode_pixels(x)
    with Phase() as ph:
        for _ in range(batches):
            encoder.encode_pixels(x)
    n = batch_size * batches
    return {"images": n, "phase": ph.to_json(), "images_per_s": round(n / ph.wall, 3)}


def reference_cosines(
    coll_path: Path, folder: Path, ckpt: Path, names: list[str]
) -> dict[str, Any]:
    """Stored vectors of a vlmsearch collection against open_clip's own preprocessing."""
    from vlmsearch import Collection

    coll = Collection.open(coll_path)
    ids = dict(zip(coll.table["path"].to_pylist(), coll.table["id"].to_pylist(), strict=True))
    stored = coll.vectors.get(np.asarray([ids[n] for n in names])).astype(np.float32)
    return stored_vs_reference(stored, folder, ckpt, names)


_REF_CACHE: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}


def reference_embeddings(folder: Path, ckpt: Path, names: list[str]) -> np.ndarray:
    """open_clip's reference: ``create_model_and_transforms`` preprocess on the PIL image.

    The image is EXIF-transposed first, as vlmsearch (like a photo viewer) shows it;
    without that, a JPEG with a rotating orientation tag (one in the ImageNet sample)
    would count as drift although no pixel was decoded differently.
    """
    key = (str(ckpt), tuple(names))
    if key not in _REF_CACHE:
        import open_clip
        import torch
        from PIL import Image, ImageOps

        model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(ckpt))
        model.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(names), 32):
                x = torch.stack(
                    [
                        preprocess(ImageOps.exif_transpose(Image.open(folder / n)))
                        for n in names[i : i + 32]
                    ]
                )
                out.append(model.encode_image(x, normalize=True).numpy())
        _REF_CACHE[key] = np.concatenate(out)
    return _REF_CACHE[key]


def stored_vs_reference(
    stored: np.ndarray, folder: Path, ckpt: Path, names: list[str]
) -> dict[str, Any]:
    ref = reference_embeddings(folder, ckpt, names)
    stored = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    cos = (stored * ref).sum(1)
    worst = int(np.argmin(cos))
    return {
        "n": len(names),
        "mean": round(float(cos.mean()), 6),
        "min": round(float(cos.min()), 6),
        "p01": round(float(np.percentile(cos, 1)), 6),
        "worst_file": names[worst],
        "below_0.999": int((cos < 0.999).sum()),
    }


def clip_retrieval_cosines(out: Path, folder: Path, ckpt: Path, names: list[str]) -> dict:
    import pyarrow.parquet as pq

    embs = np.concatenate(
        [np.load(f) for f in sorted((out / "img_emb").glob("img_emb_*.npy"))]
    ).astype(np.float32)
    meta = pq.read_table(sorted((out / "metadata").glob("*.parquet"))[0]).to_pydict()
    row = {Path(p).name: i for i, p in enumerate(meta["image_path"])}
    return stored_vs_reference(embs[[row[n] for n in names]], folder, ckpt, names)


def decode_cost(folder: Path, names: list[str], draft: bool) -> dict[str, Any]:
    """Decode + open_clip preprocess per image in this one process (no model)."""
    import open_clip
    import torch

    from vlmsearch.imaging.decode import decode_image_sized

    torch.set_num_threads(1)
    _, _, preprocess = open_clip.create_model_and_transforms(ARCH)
    datas = [(folder / n).read_bytes() for n in names]
    reduced = 0
    with Phase() as ph:
        for data in datas:
            img, _, size = decode_image_sized(data, draft=(224, 224) if draft else None)
            reduced += img.size != size
            preprocess(img)
    torch.set_num_threads(os.cpu_count() or 1)
    return {
        "images": len(names),
        "ms_per_image": round(1000 * ph.wall / len(names), 3),
        "decoded_below_full_size": reduced,
        "phase": ph.to_json(),
    }


def machine() -> dict[str, Any]:
    import open_clip
    import torch

    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "open_clip": open_clip.__version__,
        "cuda": torch.cuda.is_available(),
        "load_average_at_start": os.getloadavg(),
    }


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "folder", type=Path, help="folder of JPEGs (e.g. ../shared/data/imagenet-sample)"
    )
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="decoding processes, both tools")
    ap.add_argument("--model-batches", type=int, default=4, help="model-only timed batches")
    ap.add_argument("--check-n", type=int, default=0, help="images for the cosine checks (0: all)")
    ap.add_argument("--fast-decode", action="store_true", help="also run --fast-decode")
    ap.add_argument("--skip-clip-retrieval", action="store_true")
    ap.add_argument("--clip-venv", default=str(CLIP_VENV))
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from vlmsearch.models.encoders import load_encoder

    src = args.folder.expanduser().resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "argv": sys.argv,
        "machine": machine(),
        "settings": {
            "model": f"{ARCH} (random init, seed 0, saved to disk)",
            "batch_size": args.batch_size,
            "workers": args.workers,
            "limit": args.limit,
        },
    }
    try:
        folder = limited_folder(src, args.limit, tmp)
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        result["settings"]["images"] = len(names)
        ckpt = random_checkpoint()
        result["settings"]["checkpoint"] = str(ckpt)
        enc = load_encoder(f"{ARCH}:{ckpt}", device="cpu")
        print(f"{len(names)} images, batch {args.batch_size}, {args.workers} workers", flush=True)

        result["model_only_before"] = model_only(enc, args.batch_size, args.model_batches)
        print("model-only", result["model_only_before"]["images_per_s"], "img/s", flush=True)
        result["vlmsearch"] = run_vlmsearch(folder, ckpt, tmp / "coll", args, [])
        print("vlmsearch", result["vlmsearch"]["images_per_s_encode_loop"], flush=True)
        if not args.skip_clip_retrieval:
            result["clip_retrieval"] = run_clip_retrieval(folder, ckpt, tmp / "cr", args)
            print(
                "clip-retrieval", result["clip_retrieval"]["images_per_s_encode_loop"], flush=True
            )
        if args.fast_decode:
            result["vlmsearch_fast_decode"] = run_vlmsearch(
                folder, ckpt, tmp / "coll-fast", args, ["--fast-decode"]
            )
            print("fast", result["vlmsearch_fast_decode"]["images_per_s_encode_loop"], flush=True)
        result["model_only_after"] = model_only(enc, args.batch_size, args.model_batches)
        del enc

        check = names[: args.check_n] if args.check_n else names
        result["cosine_to_reference"] = {
            "vlmsearch": reference_cosines(tmp / "coll", folder, ckpt, check)
        }
        if "clip_retrieval" in result:
            result["cosine_to_reference"]["clip_retrieval"] = clip_retrieval_cosines(
                tmp / "cr", folder, ckpt, check
            )
        if args.fast_decode:
            result["cosine_to_reference"]["vlmsearch_fast_decode"] = reference_cosines(
                tmp / "coll-fast", folder, ckpt, check
            )
            result["decode_only"] = {
                "exact": decode_cost(folder, names, False),
                "draft": decode_cost(folder, names, True),
            }
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    mo = np.mean(
        [result["model_only_before"]["images_per_s"], result["model_only_after"]["images_per_s"]]
    )
    v = result["vlmsearch"]
    summary: dict[str, Any] = {
        "model_only_images_per_s": round(float(mo), 3),
        "vlmsearch_encode_loop_fraction_of_model_only": round(
            v["images_per_s_encode_loop"] / mo, 3
        ),
        "vlmsearch_command_fraction_of_model_only": round(v["images_per_s_command"] / mo, 3),
    }
    if "clip_retrieval" in result:
        c = result["clip_retrieval"]
        summary["ratio_vlmsearch_over_clip_retrieval_command"] = round(
            v["images_per_s_command"] / c["images_per_s_command"], 3
        )
        summary["ratio_vlmsearch_over_clip_retrieval_encode_loop"] = round(
            v["images_per_s_encode_loop"] / c["images_per_s_encode_loop"], 3
        )
    if "vlmsearch_fast_decode" in result:
        f = result["vlmsearch_fast_decode"]
        summary["fast_decode_speedup_encode_loop"] = round(
            f["images_per_s_encode_loop"] / v["images_per_s_encode_loop"], 3
        )
    result["summary"] = summary
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print("wrote", args.json)


def print_table(r: dict[str, Any]) -> None:
    rows = [
        (
            "model-only forward",
            r["model_only_before"]["images_per_s"],
            "",
            r["model_only_before"]["phase"],
        )
    ]
    rows.append(
        (
            "model-only forward (after)",
            r["model_only_after"]["images_per_s"],
            "",
            r["model_only_after"]["phase"],
        )
    )
    for key in ("vlmsearch", "clip_retrieval", "vlmsearch_fast_decode"):
        if key in r:
            x = r[key]
            rows.append((key, x["images_per_s_encode_loop"], x["images_per_s_command"], x["phase"]))
    print(
        f"\n{'run':30s} {'loop img/s':>11s} {'cmd img/s':>10s} {'wall s':>8s} {'other cores':>12s}"
    )
    for name, loop, cmd, ph in rows:
        print(
            f"{name:30s} {loop:>11} {cmd!s:>10s} {ph['wall_s']:>8} "
            f"{ph['other_processes_cores']:>12}"
        )
    for k, v in r["summary"].items():
        print(f"{k}: {v}")
    for k, v in r.get("cosine_to_reference", {}).items():
        print(f"cosine to reference, {k}: mean {v['mean']} min {v['min']} (n={v['n']})")
    for k, v in r.get("decode_only", {}).items():
        print(f"decode+preprocess only, {k}: {v['ms_per_image']} ms/image")


if __name__ == "__main__":
    main()
