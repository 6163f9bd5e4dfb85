#!/usr/bin/env python
"""Derive vlmsearch's ImageNet-1k WordNet table from WordNet 3.0's ``data.noun``.

The table ships as package data (``vlmsearch/models/asif/data/imagenet-wordnet.json.gz``)
and feeds the hierarchy anchors of the offline ASIF default. It holds, for the 1000
ImageNet classes in their standard index order (sorted WordNet ids), every synset on
their hypernym chains: lemma names, the gloss's first clause and the hypernym ids.

WordNet comes from Debian's ``wordnet-base`` package::

    apt-get download wordnet-base && dpkg -x wordnet-base_*.deb wn
    python scripts/build_wordnet_table.py wn/usr/share/wordnet/data.noun \
        --classes ../shared/data/imagenet-sample

``--classes`` is a folder whose file names start with the 1000 WordNet ids (the sample
images are named ``n01440764_tench.JPEG``), or a text file with one id per line.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

OUT = (
    Path(__file__).resolve().parent.parent
    / "vlmsearch"
    / "models"
    / "asif"
    / "data"
    / "imagenet-wordnet.json.gz"
)


def parse_data_noun(path: Path) -> dict[str, dict]:
    """WordNet id (``n`` + 8-digit offset) -> lemmas, gloss, hypernym ids.

    A data line is: offset lex_filenum ss_type w_cnt [word lex_id]... p_cnt
    [pointer_symbol offset pos source/target]... | gloss (wndb(5WN))."""
    synsets: dict[str, dict] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line or line.startswith(" "):  # the licence header lines start with spaces
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        offset, n_words = f[0], int(f[3], 16)
        words = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        i = 4 + 2 * n_words
        n_ptr = int(f[i])
        parents = []
        for j in range(n_ptr):
            sym, target, pos = f[i + 1 + 4 * j : i + 4 + 4 * j]
            if sym in ("@", "@i") and pos == "n":  # hypernym, instance hypernym
                parents.append("n" + target)
        # lemma markers such as "(p)" in adjectives do not occur in nouns; strip anyway
        words = [w.split("(")[0] for w in words]
        synsets["n" + offset] = {
            "lemmas": words,
            "gloss": gloss.split(";")[0].strip(),
            "parents": parents,
        }
    return synsets


def read_class_ids(src: Path) -> list[str]:
    if src.is_dir():
        ids = sorted({p.name.split("_")[0] for p in src.iterdir() if p.name.startswith("n")})
    else:
        ids = [x.strip() for x in src.read_text().split() if x.strip()]
    if len(ids) != 1000 or ids != sorted(ids):
        raise SystemExit(f"expected 1000 sorted WordNet ids, got {len(ids)}")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_noun", type=Path)
    ap.add_argument("--classes", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    synsets = parse_data_noun(args.data_noun)
    classes = read_class_ids(args.classes)
    keep: dict[str, dict] = {}
    todo = list(classes)
    while todo:
        s = todo.pop()
        if s in keep:
            continue
        if s not in synsets:
            raise SystemExit(f"{s} is not a noun synset of this WordNet")
        keep[s] = synsets[s]
        todo += synsets[s]["parents"]
    table = {
        "source": "WordNet 3.0 (Princeton University), data.noun from Debian wordnet-base",
        "licence": "WordNet 3.0 licence; see LICENSE-WordNet in this folder",
        "classes": classes,
        "synsets": dict(sorted(keep.items())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(table, separators=(",", ":"), ensure_ascii=True).encode()
    # mtime 0: the same input gives the same bytes
    with open(args.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw)
    print(f"{args.out}: {len(classes)} classes, {len(keep)} synsets, {args.out.stat().st_size} B")


if __name__ == "__main__":
    main()
