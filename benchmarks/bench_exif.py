"""The cost of the EXIF columns (issue 19): per-image extraction while decoding, and the
one-off backfill of a collection indexed before them.

    python benchmarks/bench_exif.py [FOLDER] [--tmp DIR]

FOLDER defaults to ../shared/data/imagenet-sample next to the checkout (1000 JPEGs).
The backfill is timed on a copy of FOLDER indexed with the tiny test model and its EXIF
columns left out, so the next ``index`` run reads only EXIF (nothing is re-encoded)."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("VLMSEARCH_MODEL_CONFIGS", str(HERE.parent / "tests" / "model_configs"))
os.environ.setdefault("VLMSEARCH_TEXT_ONNX", "0")

from vlmsearch import Collection  # noqa: E402
from vlmsearch.imaging import exif  # noqa: E402
from vlmsearch.ingest import encode, pipeline  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402


def per_image(files: list[Path]) -> dict[str, float]:
    """Microseconds per image: EXIF from an image already open (what decoding adds), and
    from the file's header alone (what the backfill does per image)."""
    opened, header, found = [], [], 0
    for f in files:
        data = f.read_bytes()
        img = Image.open(io.BytesIO(data))
        t0 = time.perf_counter()
        got = exif.from_image(img)
        opened.append(time.perf_counter() - t0)
        found += bool(got)
        t0 = time.perf_counter()
        exif.from_file(str(f))
        header.append(time.perf_counter() - t0)
    return {
        "images": len(files),
        "with_exif": found,
        "open_image_us_median": statistics.median(opened) * 1e6,
        "open_image_us_mean": statistics.fmean(opened) * 1e6,
        "header_only_us_median": statistics.median(header) * 1e6,
        "header_only_us_mean": statistics.fmean(header) * 1e6,
    }


def backfill(folder: Path, tmp: Path) -> dict[str, float]:
    """Index a copy without EXIF columns, then time the run that backfills them."""
    root = tmp / "photos"
    shutil.copytree(folder, root)
    opts = IngestOptions(workers=0)
    mp_backfill, mp_columns = pipeline.backfill_exif, encode.exif.to_columns
    pipeline.backfill_exif = lambda *a, **k: 0  # type: ignore[assignment]
    encode.exif.to_columns = lambda values: {}  # type: ignore[assignment]
    try:
        Collection.index(root, model="vlms-tiny", options=opts, device="cpu")
    finally:
        pipeline.backfill_exif, encode.exif.to_columns = mp_backfill, mp_columns
    t0 = time.perf_counter()
    coll = Collection.index(root, model="vlms-tiny", options=opts, device="cpu")
    total = time.perf_counter() - t0
    rep = coll.last_report
    return {
        "images": rep.scanned,
        "encoded": rep.encoded,
        "index_run_s": total,
        "notice": next((n for n in rep.notices if "EXIF" in n), ""),
        "rows_with_taken_at": sum(r["taken_at"] is not None for r in coll.table.to_pylist()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    sample = HERE.parent.parent / "shared" / "data" / "imagenet-sample"
    ap.add_argument("folder", nargs="?", default=str(sample))
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    folder = Path(args.folder).resolve()
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
    out = {"per_image": per_image(files)}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        out["backfill"] = backfill(folder, Path(tmp))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
