"""OCR quality: text rendered with Pillow over ImageNet photos, read back by `vlmsearch ocr`.

Each image gets a made-up word and a number ("KORADIM 4821") in one of several fonts,
sizes and rotations, on a contrasting backing box or with an outline, pasted over a photo
scaled to 640 px. The collection is indexed, OCR runs over it, and we report

- character error rate: edit distance / reference length, upper-cased, whitespace
  removed (RapidOCR often drops the space between words), overall and per condition,
  against the OCR line closest to the reference (the photos have text of their own);
  ``cer_all_text`` compares with all the text read instead;
- retrieval of the right image by its word: ``search WORD --where "text ILIKE '%WORD%'"``,
  ``search WORD --text-column text`` and the same fused with the image score (0.5),
  as recall@1 and @5.

    python benchmarks/bench_ocr.py --n 120 --out benchmarks/results-ocr-DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONTS = {
    "dejavu-sans-bold": "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "liberation-serif": "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "pillow-default": None,  # ImageFont.load_default(size=...)
}
SIZES = (24, 40, 64)
ROTATIONS = (0, 10, -10, 30, -30, 90)
SYLLABLES = "ka ro di mo lu ne ta vi so pe ra gu zo fi be la mi no tu re".split()


def make_word(rng: random.Random, used: set[str]) -> str:
    while True:
        w = "".join(rng.choice(SYLLABLES) for _ in range(3)).upper()
        if w not in used:
            used.add(w)
            return w


def render(photo: Path, text: str, font_name: str, size: int, angle: int, rng: random.Random):
    img = Image.open(photo).convert("RGB")
    img.thumbnail((640, 640))
    path = FONTS[font_name]
    font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)
    x0, y0, x1, y1 = ImageDraw.Draw(img).textbbox((0, 0), text, font=font)
    pad = max(4, size // 4)
    layer = Image.new("RGBA", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    backed = rng.random() < 0.5
    if backed:  # a contrasting box behind the text
        d.rectangle((0, 0, *layer.size), fill=(255, 255, 255, 220))
        d.text((pad - x0, pad - y0), text, font=font, fill=(10, 10, 10, 255))
    else:  # white text with a dark outline
        d.text(
            (pad - x0, pad - y0),
            text,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=max(2, size // 12),
            stroke_fill=(0, 0, 0, 255),
        )
    layer = layer.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    if layer.width > img.width or layer.height > img.height:
        layer.thumbnail((img.width - 4, img.height - 4))
    x = rng.randint(0, img.width - layer.width)
    y = rng.randint(0, img.height - layer.height)
    img.paste(layer, (x, y), layer)
    return img, "backing" if backed else "outline"


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def norm(s: str) -> str:
    return "".join(s.upper().split())


def build(folder: Path, photos: list[Path], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    used: set[str] = set()
    items = []
    for i in range(n):
        word = make_word(rng, used)
        text = f"{word} {rng.randint(1000, 9999)}"
        font = list(FONTS)[i % len(FONTS)]
        size = SIZES[(i // len(FONTS)) % len(SIZES)]
        angle = ROTATIONS[(i // (len(FONTS) * len(SIZES))) % len(ROTATIONS)]
        img, style = render(photos[i % len(photos)], text, font, size, angle, rng)
        name = f"img{i:04d}.jpg"
        img.save(folder / name, quality=92)
        items.append(
            dict(file=name, word=word, text=text, font=font, size=size, angle=angle, style=style)
        )
    return items


def summarise(items: list[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(str(it[key]), []).append(it)
    return {
        g: round(sum(x["dist"] for x in v) / sum(len(norm(x["text"])) for x in v), 4)
        for g, v in sorted(groups.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--photos", default="/work/shared/data/imagenet-sample")
    ap.add_argument("--model", default="asif")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from vlmsearch import Collection, names
    from vlmsearch.models.ocr import OcrEngine

    photos = sorted(Path(args.photos).glob("*.JPEG"))
    random.Random(args.seed).shuffle(photos)
    work = Path(tempfile.mkdtemp(prefix="bench_ocr_"))
    folder = work / "images"
    folder.mkdir()
    items = build(folder, photos, args.n, args.seed)
    t0 = time.time()
    coll = Collection.index(folder, work / "coll", model=args.model)
    t_index = time.time() - t0
    t0 = time.time()
    engine = OcrEngine()
    coll.ocr(engine, write_column="text")
    t_ocr = time.time() - t0
    rows = coll.rows(coll.vectors.ids)
    id_of = {names.row_path(r): int(i) for i, r in rows.items()}
    text_of = {names.row_path(r): r.get("text") or "" for r in rows.values()}
    recall = {m: [0, 0] for m in ("ilike", "text_column", "fused_0.5")}
    lines_found = 0
    for it in items:
        hyp = text_of.get(it["file"], "")
        it["ocr"] = hyp
        ref = norm(it["text"])
        # the photos have text of their own: the best line is the rendered one's reading
        it["dist"] = min([edit_distance(ref, norm(ln)) for ln in hyp.split("\n")] + [len(ref)])
        it["dist_all"] = edit_distance(ref, norm(hyp))
        want = id_of[it["file"]]
        w = it["word"].lower()
        runs = {
            "ilike": coll.search(w, k=5, where=f"text ILIKE '%{w}%'"),
            "text_column": coll.search(w, k=5, text_column="text"),
            "fused_0.5": coll.search(w, k=5, text_column="text", text_weight=0.5),
        }
        for m, hits in runs.items():
            ids = [h.id for h in hits]
            recall[m][0] += int(ids[:1] == [want])
            recall[m][1] += int(want in ids)
        top = runs["text_column"][:1]
        lines_found += int(bool(top) and top[0].id == want and "ocr_line" in top[0].extra)
    total_ref = sum(len(norm(it["text"])) for it in items)
    n = len(items)
    result = {
        "n_images": n,
        "model": args.model,
        "index_seconds": round(t_index, 1),
        "ocr_seconds": round(t_ocr, 1),
        "ocr_seconds_per_image": round(t_ocr / n, 2),
        "cer": round(sum(it["dist"] for it in items) / total_ref, 4),
        "cer_all_text": round(sum(it["dist_all"] for it in items) / total_ref, 4),
        "exact_word_read": round(sum(it["word"] in norm(it["ocr"]) for it in items) / n, 4),
        "cer_by": {k: summarise(items, k) for k in ("font", "size", "angle", "style")},
        "recall": {
            m: {"@1": round(a / n, 4), "@5": round(b / n, 4)} for m, (a, b) in recall.items()
        },
        "matching_line_on_right_top_hit": round(lines_found / n, 4),
        "load_average": os.getloadavg(),
        "items": items,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "items"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
