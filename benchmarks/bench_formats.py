"""Decode time of the format plugins (issue 19): HEIC against JPEG of the same picture at
a few sizes, and a camera RAW's embedded preview against demosaicing it (the rule in
:mod:`vlmsearch.imaging.formats.raw`).

    python benchmarks/bench_formats.py [--repeats N] [--json OUT]

Pictures are generated (smooth gradients plus noise, like a photo's spectrum), encoded
at quality 90 by Pillow (JPEG) and pillow-heif (HEIC, x265); the RAW is a hand-written
DNG of a 16-bit mosaic (tests/imaging/dng.py), with and without a full-size JPEG preview.
Each figure is the median of N timed calls of ``decode_image_meta`` (the indexer's
decode: open, EXIF, load, orientation, RGB), after one untimed warm-up call."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.imaging.dng import make_dng  # noqa: E402
from vlmsearch.imaging.decode import decode_image_meta  # noqa: E402

SIZES = ((640, 480), (1920, 1080), (4032, 3024))


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 255], -1)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "HEIC":
        import pillow_heif

        pillow_heif.from_pillow(img).save(buf, quality=90)
    else:
        img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed(data: bytes, name: str, repeats: int) -> float:
    decode_image_meta(data, name=name)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode_image_meta(data, name=name)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for size in SIZES:
        img = picture(size)
        for fmt, name in (("JPEG", "x.jpg"), ("HEIC", "x.heic")):
            data = encoded(img, fmt)
            ms = timed(data, name, args.repeats)
            rows.append({"what": fmt, "size": list(size), "bytes": len(data), "ms": ms})
            print(f"{fmt:5} {size[0]}x{size[1]}: {len(data) / 1e3:8.1f} kB {ms:8.1f} ms")
    raw_size = (4032, 3024)
    preview = encoded(picture(raw_size), "JPEG")
    for what, data in (
        ("RAW demosaic (half size)", make_dng(*raw_size)),
        ("RAW embedded preview", make_dng(*raw_size, preview=preview)),
    ):
        ms = timed(data, "x.dng", args.repeats)
        rows.append({"what": what, "size": list(raw_size), "bytes": len(data), "ms": ms})
        print(f"{what}: {ms:.1f} ms")
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
