"""Dataset inputs against a folder of the same images: the ImageNet sample written as
webdataset shards (key.jpg + key.txt + key.json) and as a Parquet file of image bytes,
then indexed from each with the same model. Reports images/s per layout (the ratio to the
folder is the cost of reading members), the cosine between each item's vector and the
folder's (identical pixels must give identical vectors), and a caption query.

    python benchmarks/bench_datasets.py --model asif --n 1000 --json results.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def _label(name: str) -> str:
    return name.split("_", 1)[1].rsplit(".", 1)[0].replace("_", " ")


def write_layouts(files: list[Path], work: Path, shard_size: int) -> dict[str, list[Path]]:
    folder = work / "folder"
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    shards = work / "shards"
    shards.mkdir()
    tars = []
    for s in range(0, len(files), shard_size):
        path = shards / f"{s // shard_size:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, f in enumerate(files[s : s + shard_size], start=s):
                key = f"{i:09d}"
                meta = {"key": key, "label": _label(f.name), "source": f.name}
                for name, data in (
                    (f"{key}.jpg", f.read_bytes()),
                    (f"{key}.txt", f"a photo of a {_label(f.name)}".encode()),
                    (f"{key}.json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        tars.append(path)
    pdir = work / "parquet"
    pdir.mkdir()
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(len(files))],
            "jpg": pa.array([f.read_bytes() for f in files], pa.binary()),
            "caption": [f"a photo of a {_label(f.name)}" for f in files],
        }
    )
    pq.write_table(table, pdir / "part-00000.parquet", row_group_size=256)
    return {"folder": [folder], "webdataset": tars, "parquet": [pdir / "part-00000.parquet"]}


def vectors_by_source(c: Collection, files: list[Path], layout: str) -> np.ndarray:
    """Rows in the order of ``files`` (the folder by name, the datasets by key)."""
    by_path = dict(zip(c.table["path"].to_pylist(), c.table["id"].to_pylist(), strict=True))
    vt = c.vectors
    out = []
    for i, f in enumerate(files):
        if layout == "folder":
            p = f.name
        elif layout == "webdataset":
            p = next(k for k in by_path if k.endswith(f"/{i:09d}.jpg"))
        else:
            p = f"part-00000.parquet/{i:09d}"
        row = vt.get(np.asarray([by_path[p]]))
        out.append(np.asarray(row.toarray() if hasattr(row, "toarray") else row, np.float32)[0])
    m = np.stack(out)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="asif")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-datasets"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    files = sorted(SAMPLE.glob("*.JPEG"))[: args.n]
    shutil.rmtree(args.work, ignore_errors=True)
    layouts = write_layouts(files, args.work, args.shard_size)
    results: dict[str, dict] = {}
    ref = None
    for name, paths in layouts.items():
        t0 = time.perf_counter()
        target = paths[0] if name == "folder" else paths
        coll = args.work / f"coll-{name}"
        c = Collection.index(target, coll, model=args.model, options=IngestOptions())
        wall = time.perf_counter() - t0
        rep = c.last_report
        vecs = vectors_by_source(c, files, name)
        if ref is None:
            ref = vecs
        cos = (vecs * ref).sum(axis=1)
        again = Collection.index(target, coll, model=args.model, options=IngestOptions())
        hit = c.search("a photo of a goldfish", k=1)[0].relpath if name != "folder" else None
        results[name] = {
            "items": len(c.table),
            "encoded": rep.encoded,
            "errors": rep.errors,
            "encode_seconds": round(rep.encode_seconds, 2),
            "images_per_second": round(rep.images_per_second, 1),
            "wall_seconds": round(wall, 2),
            "rerun_seconds": round(again.last_report.seconds, 2),
            "rerun_unchanged": again.last_report.unchanged,
            "cosine_to_folder_min": round(float(cos.min()), 6),
            "top_hit_goldfish": hit,
        }
        print(name, results[name], flush=True)
    base = results["folder"]["images_per_second"]
    for r in results.values():
        r["throughput_vs_folder"] = round(r["images_per_second"] / base, 3) if base else None
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "model": args.model,
        "n": len(files),
        "results": results,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
