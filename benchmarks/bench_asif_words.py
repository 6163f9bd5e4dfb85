#!/usr/bin/env python
"""ASIF with WordNet hypernym anchors: everyday words, captions and class names, before
(default-anchors recipe 1: the 1000 ImageNet classes' prototypes) and after (recipe 2:
those plus hypernym anchors such as "bird", "dog", "vehicle"), through vlmsearch's own
anchor sets (``build_prototype_anchors``, ``build_data_anchors``, ``write_anchor_set``,
``AnchorSet.relative``). Encoders: EfficientNet-Lite0 + all-MiniLM-L6-v2 (k=800, each
block's own powers).

Data: ``../shared/data/imagenet-sample`` (1000 JPEGs, one per ImageNet class) plus the 7
bundled ``vlmsearch/samples/*.jpg`` as out-of-distribution distractors;
``benchmarks/data/asif-everyday-words.json`` (60 queries and 7 coarse labels with their
WordNet synsets, fixed before tuning); ``benchmarks/data/imagenet-sample-captions.csv``
(300 hand-written captions); WordNet glosses from the packaged table.

Sections, each for "before" and "after":

1. **Everyday words**: per query R@10 = |expected & top10| / min(10, |expected|) over
   1000 photos + 7 bundled images (expected: the classes below the query's synsets);
   mean, per query, and how many bundled images intrude into top-10s. **Coarse labels**:
   zero-shot among 7 labels ("a photo of a {label}."), over the photos whose class lies
   under exactly one label.
2. **Gloss captions**: text->image R@1/5/10 over the 1000 (caption = the class's gloss).
3. **Hand captions**: text->image R@1/5/10, gallery the 300 captioned photos; also dev
   (even rows) and test (odd rows), each a 150-image gallery.
4. **Exact class names**: R@1 of "a photo of a {class}." over the 1000; 1000-class
   zero-shot top-1.
5. **Out of distribution**: top-1 among the 7 bundled images for 7 queries.
6. **Data anchors** (without ``--grid``): the 150 dev hand-captioned photos with their
   captions + the 700 uncaptioned photos with their glosses (850 pairs) through
   ``build_data_anchors`` (data only / data+prototype), evaluated on the 150 test
   captions (gallery: those 150 photos), against the prototype-only sets; and the
   prototype block's weight (0.5, 1, 2) in a data+prototype set.
7. ``--grid``: hypernym design grid (group pool 1/2, group weight 0.5/1, classes per
   hypernym up to 150/400, hypernym text: first lemma alone or with the gloss as
   shipped), sections 1-5 for each (the data section is then skipped).
8. ``--linear-map`` (alone: sections 1-7 skipped): the data anchors of section 6, built
   from the cached image features (``write_anchor_set`` with the same blocks as
   ``build_data_anchors``), plus a closed-form ridge map from MiniLM caption embeddings
   to unit EfficientNet features fitted on the 850 anchor pairs,
   M = (X^T X + lambda I)^-1 X^T Y. A query caption t gets the image-side relative
   representation of unit(t M) over the data block, mixed into its data-block text
   representation: unit(r_text(t) + beta r_image(unit(t M))); with the prototype block
   that part replaces the data block's, weighted and renormalised as
   ``AnchorSet.relative`` does. Gallery representations are unchanged. beta 0 must
   reproduce section 6's figures (asserted); grid beta x lambda, R@1/5/10 on the 150 test
   captions.

Image features are encoded once and cached under ``benchmarks/.cache``; the recipe-2
image side is checked against ``AsifEncoder.encode_pixels`` on a few images.

Run: ``python benchmarks/bench_asif_words.py [--grid | --linear-map] --out results.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_asif import log, sample_files  # same folder: run as a script

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
BUNDLED = REPO / "vlmsearch" / "samples"
WORDS = REPO / "benchmarks" / "data" / "asif-everyday-words.json"
CAPTIONS = REPO / "benchmarks" / "data" / "imagenet-sample-captions.csv"
CACHE = REPO / "benchmarks" / ".cache"
K = 800
TEMPLATE = "a photo of a {}."
# out-of-distribution queries over the 7 bundled images -> the acceptable top-1 files
OOD_QUERIES = {
    "an animal": ["cat.jpg"],
    "a cat": ["cat.jpg"],
    "a person": ["astronaut.jpg", "cameraman.jpg"],
    "a man with a camera": ["cameraman.jpg"],
    "a cup of coffee": ["coffee.jpg"],
    "a rocket launch": ["rocket.jpg"],
    "an astronaut": ["astronaut.jpg"],
}
PROTO_WEIGHTS = (0.5, 1.0, 2.0)
GRID_POOL = (1.0, 2.0)
GRID_WEIGHT = (0.5, 1.0)
GRID_MAX_CLASSES = (150, 400)
GRID_TEXTS = ("lemma", "lemma+gloss")  # lemma+gloss: hierarchy.hypernym_texts (shipped)
LM_BETAS = (0.0, 0.25, 0.5, 1.0, 2.0)
LM_LAMBDAS = (0.1, 1.0, 10.0)
# section 6's figures (results-asif-words-2026-12-03.json) that beta 0 must reproduce
LM_REFERENCE = REPO / "benchmarks" / "results-asif-words-2026-12-03.json"


def image_features(img_enc: Any, files: list[Path], tag: str = "") -> np.ndarray:
    """Raw (unnormalised) image features, cached by encoder identity (the file name of
    bench_asif.py's cache for the sample, so the two share it)."""
    from vlmsearch.imaging.decode import DecodeTask, iter_decoded

    key = str(img_enc.spec.get("sha256", img_enc.name))[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"feats-{img_enc.kind}-{key}{tag}-{len(files)}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    out = np.zeros((len(files), img_enc.dim), np.float32)
    tasks = [DecodeTask(i, str(f)) for i, f in enumerate(files)]
    for recs, pixels in iter_decoded(tasks, img_enc.image_transform(), 50, 2):
        bad = [r for r in recs if r.error is not None]
        if bad:
            raise SystemExit(f"cannot decode {files[bad[0].index]}: {bad[0].error}")
        out[[r.index for r in recs]] = img_enc.encode_pixels(pixels, normalize=False)
    log(f"encoded {len(files)} images in {time.perf_counter() - t0:.1f}s")
    np.save(path, out)
    return out


class TextMemo:
    """The text encoder's ``encode_texts`` with a per-text cache: anchor builds, the grid
    and the evaluations ask for the same prompts many times."""

    def __init__(self, encode: Any, dim: int) -> None:
        self.encode, self.dim = encode, dim
        self.cache: dict[str, np.ndarray] = {}
        self.encoded = 0

    def __call__(self, texts: Any) -> np.ndarray:
        texts = list(texts)
        miss = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for i in range(0, len(miss), 1024):
            chunk = miss[i : i + 1024]
            for t, v in zip(chunk, np.asarray(self.encode(chunk), np.float32), strict=True):
                self.cache[t] = v
        self.encoded += len(miss)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.cache[t] for t in texts])


def recall(scores: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """scores: (queries, gallery), query i's match is gallery item i (ties count for it)."""
    n = len(scores)
    rank = (scores > scores[np.arange(n), np.arange(n)][:, None]).sum(1)
    return {f"R@{k}": float((rank < k).mean()) for k in ks}


class Bench:
    """The fixed inputs, and the evaluation of one anchor set on sections 1-5."""

    def __init__(self, args: argparse.Namespace) -> None:
        from vlmsearch.models.asif import hierarchy as hier
        from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder

        self.files, self.wnids = sample_files(args.sample)
        self.bundled = sorted(BUNDLED.glob("*.jpg"))
        table = hier.wordnet_table()
        if table["classes"] != self.wnids:
            raise SystemExit("the sample's WordNet ids are not the ImageNet-1k classes in order")
        synsets = table["synsets"]
        # class indices below each synset (itself included for a class)
        self.below = {h.wnid: set(h.classes) for h in hier.hypernyms(1, hier.IMAGENET_CLASSES)}
        self.img_enc = load_image_encoder("efficientnet-lite0", device="cpu")
        self.txt_enc = load_text_encoder("minilm", device="cpu")
        self.memo = TextMemo(self.txt_enc.encode_texts, self.txt_enc.dim)
        self.txt_enc.encode_texts = self.memo  # type: ignore[method-assign]
        t0 = time.perf_counter()
        self.raw = image_features(self.img_enc, self.files)
        self.raw_ood = image_features(self.img_enc, self.bundled, "-bundled")
        self.encode_s = time.perf_counter() - t0
        self.class_names = list(self.img_enc.classifier().class_names)
        words = json.loads(WORDS.read_text(encoding="utf-8"))
        self.queries = [(q, ids) for q, ids in words["queries"]]
        self.coarse = [(label, s) for label, s in words["coarse_labels"]]
        self.glosses = [synsets[w]["gloss"] for w in self.wnids]
        with open(CAPTIONS, encoding="utf-8", newline="") as f:
            self.rows = list(csv.DictReader(f))
        row_of = {w: i for i, w in enumerate(self.wnids)}
        self.cap_idx = np.array([row_of[r["image"].split("_")[0]] for r in self.rows])
        self.captions = [r["caption"] for r in self.rows]

    def text(self, aset: Any, texts: list[str]) -> np.ndarray:
        return aset.relative("text", self.memo(texts), K)

    def evaluate(self, aset: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"anchors": aset.count}
        ri_all = aset.relative("image", np.vstack([self.raw, self.raw_ood]), K)
        ri, ro = ri_all[:1000], ri_all[1000:]

        # 1. everyday words over 1000 + 7, and coarse labels
        sc = self.text(aset, [q for q, _ in self.queries]) @ ri_all.T
        per_query, r10, intrusions = {}, [], 0
        for (q, ids), s in zip(self.queries, sc, strict=True):
            expected = set().union(*[self.below[i] for i in ids])
            top = np.argsort(-s, kind="stable")[:10]
            r = len(expected & set(top.tolist())) / min(10, len(expected))
            n_in = int((top >= 1000).sum())
            r10.append(r)
            intrusions += n_in
            per_query[q] = {"expected": len(expected), "R@10": r, "bundled_in_top10": n_in}
        out["words"] = {
            "R@10": float(np.mean(r10)),
            "bundled_intrusions": intrusions,
            "per_query": per_query,
        }
        member = np.zeros((1000, len(self.coarse)), bool)
        for j, (_, s) in enumerate(self.coarse):
            member[list(self.below[s]), j] = True
        ok = member.sum(1) == 1
        rl = self.text(aset, [TEMPLATE.format(label) for label, _ in self.coarse])
        pred = (ri @ rl.T).argmax(1)
        out["coarse"] = {
            "accuracy": float((member[np.arange(1000), pred] & ok).sum() / ok.sum()),
            "photos": int(ok.sum()),
            "labels": [label for label, _ in self.coarse],
        }

        # 2. gloss captions over the 1000
        out["gloss"] = recall(self.text(aset, self.glosses) @ ri.T)

        # 3. hand captions: the 300, and dev/test halves
        rh = self.text(aset, self.captions)
        s = rh @ ri[self.cap_idx].T
        out["hand"] = recall(s)
        for half, sl in (("dev", slice(0, None, 2)), ("test", slice(1, None, 2))):
            out[f"hand_{half}"] = recall(s[sl][:, sl])
        s1000 = rh @ ri.T  # the same captions against all 1000 photos
        rank = (s1000 > s1000[np.arange(len(rh)), self.cap_idx][:, None]).sum(1)
        out["hand_vs_1000"] = {f"R@{k}": float((rank < k).mean()) for k in (1, 5, 10)}

        # 4. exact class names
        rc = self.text(aset, [TEMPLATE.format(c) for c in self.class_names])
        out["class_names"] = {
            "R@1": recall(rc @ ri.T, (1,))["R@1"],
            "zero_shot_top1": float(((ri @ rc.T).argmax(1) == np.arange(1000)).mean()),
        }

        # 5. out of distribution: top-1 among the 7 bundled images
        s7 = self.text(aset, list(OOD_QUERIES)) @ ro.T
        top1 = {q: self.bundled[int(s7[j].argmax())].name for j, q in enumerate(OOD_QUERIES)}
        out["ood"] = {
            "hits": sum(top1[q] in want for q, want in OOD_QUERIES.items()),
            "queries": len(OOD_QUERIES),
            "top1": top1,
        }
        return out


def summary(r: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one evaluation, flat."""
    return {
        "words R@10": r["words"]["R@10"],
        "bundled in top10": r["words"]["bundled_intrusions"],
        "coarse acc": r["coarse"]["accuracy"],
        "gloss R@1": r["gloss"]["R@1"],
        "gloss R@5": r["gloss"]["R@5"],
        "gloss R@10": r["gloss"]["R@10"],
        "hand R@1": r["hand"]["R@1"],
        "hand R@5": r["hand"]["R@5"],
        "hand R@10": r["hand"]["R@10"],
        "hand dev R@10": r["hand_dev"]["R@10"],
        "hand test R@10": r["hand_test"]["R@10"],
        "class R@1": r["class_names"]["R@1"],
        "zero-shot top1": r["class_names"]["zero_shot_top1"],
        "OOD top1 (of 7)": r["ood"]["hits"],
    }


def hypernym_block(bench: Bench, pool: float, weight: float, max_classes: int, texts: str) -> Any:
    """build.prototype_block(hierarchy=True) with its hypernym parameters open."""
    import pyarrow as pa

    from vlmsearch.models.asif import hierarchy as hier
    from vlmsearch.models.asif.anchors import BlockData
    from vlmsearch.models.asif.build import (
        PROTOTYPE_POWERS,
        _mean_embeddings,
        prototype_block,
    )

    base = prototype_block(bench.img_enc, bench.txt_enc, TEMPLATE, hierarchy=False)
    hyps = hier.hypernyms(hier.MIN_CLASSES, max_classes)
    if texts == "lemma+gloss":
        groups_texts = [hier.hypernym_texts(h, TEMPLATE) for h in hyps]
    elif texts == "lemma":
        groups_texts = [[TEMPLATE.format(h.lemmas[0])] for h in hyps]
    else:
        raise ValueError(texts)
    text_vectors = np.vstack([base.text_vectors, _mean_embeddings(bench.txt_enc, groups_texts)])
    n = len(base.pairs)
    p = base.pairs.to_pydict()
    pairs = pa.table(
        {
            "anchor": pa.array(np.arange(n + len(hyps)), pa.int64()),
            "image": pa.array(p["image"] + [f"classes:{h.wnid}" for h in hyps]),
            "caption": pa.array(p["caption"] + [t[0] for t in groups_texts]),
            "class_index": pa.array(p["class_index"] + [None] * len(hyps), pa.int64()),
            "class_name": pa.array(p["class_name"] + [h.lemmas[0] for h in hyps]),
            "wordnet_id": pa.array(p["wordnet_id"] + [h.wnid for h in hyps], pa.string()),
        }
    )
    return BlockData(
        "prototypes",
        base.image_vectors,
        text_vectors.astype(np.float32),
        pairs,
        image_similarity="softmax",
        powers=PROTOTYPE_POWERS,
        groups=[list(h.classes) for h in hyps],
        group_weight=weight,
        group_pool=pool,
    )


def check_shipped_encoder(bench: Bench, aset: Any) -> dict[str, Any]:
    """The recipe-2 image side as computed here (cached raw features, AnchorSet.relative)
    equals AsifEncoder.encode_pixels on freshly decoded images."""
    from vlmsearch.imaging.decode import DecodeTask, iter_decoded
    from vlmsearch.models.asif.encoder import AsifEncoder

    enc = AsifEncoder(aset, bench.img_enc, bench.txt_enc)
    picks = [0, 250, 500, 750, 999]
    paths = [bench.files[i] for i in picks] + bench.bundled[:2]
    tasks = [DecodeTask(i, str(p)) for i, p in enumerate(paths)]
    got = np.zeros((len(paths), aset.count), np.float32)
    for recs, pixels in iter_decoded(tasks, enc.image_transform(), len(paths), 1):
        got[[r.index for r in recs]] = enc.encode_pixels(pixels)
    ours = aset.relative("image", np.vstack([bench.raw[picks], bench.raw_ood[:2]]), K)
    diff = float(np.abs(got - ours).max())
    assert np.allclose(got, ours, atol=1e-4), f"AsifEncoder differs by {diff}"
    assert enc.k == K and enc.p_image == 2.0, (enc.k, enc.p_image)
    return {"images": len(paths), "max_abs_diff": diff, "k": enc.k, "p_image": enc.p_image}


def data_section(bench: Bench, tmp: Path, proto_sets: dict[str, Any]) -> dict[str, Any]:
    """Section 6: data anchors from the dev captions + glosses, tested on test captions."""
    from vlmsearch.models.asif.anchors import BlockData, write_anchor_set
    from vlmsearch.models.asif.build import (
        DATA_POWERS,
        PROTOTYPE_BLOCK_WEIGHT,
        build_data_anchors,
        prototype_block,
    )

    dev, test = np.arange(0, 300, 2), np.arange(1, 300, 2)
    others = np.setdiff1d(np.arange(1000), bench.cap_idx)
    src = tmp / "data-anchors.csv"
    with open(src, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for j in dev:
            w.writerow([str(bench.files[bench.cap_idx[j]]), bench.captions[j]])
        for i in others:
            w.writerow([str(bench.files[i]), bench.glosses[i]])
    gal = bench.cap_idx[test]
    queries = bench.memo([bench.captions[j] for j in test])

    def score(aset: Any) -> dict[str, float]:
        ri = aset.relative("image", bench.raw[gal], K)
        return recall(aset.relative("text", queries, K) @ ri.T)

    out: dict[str, Any] = {
        "pairs": {"dev_hand_captions": len(dev), "glosses": len(others)},
        "test_queries": len(test),
        "gallery": len(gal),
    }
    t0 = time.perf_counter()
    data, failed = build_data_anchors(
        tmp / "data", bench.img_enc, bench.txt_enc, src, prototypes=False, workers=2
    )
    out["build_data_only_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    both, failed2 = build_data_anchors(
        tmp / "data+proto", bench.img_enc, bench.txt_enc, src, prototypes=True, workers=2
    )
    out["build_data_prototype_s"] = round(time.perf_counter() - t0, 1)
    assert not failed and not failed2 and data.count == len(dev) + len(others)
    # the data block's image vectors are the cached features, normalised
    img_rows = {str(f): i for i, f in enumerate(bench.files)}
    rows = [img_rows[p] for p in data.pairs()["image"].to_pylist()]
    unit = bench.raw[rows] / np.linalg.norm(bench.raw[rows], axis=1, keepdims=True)
    out["data_image_vectors_max_abs_diff"] = float(np.abs(data.vectors("image") - unit).max())
    assert out["data_image_vectors_max_abs_diff"] < 1e-4

    res = {
        "prototype recipe 1": score(proto_sets["before"]),
        "prototype recipe 2": score(proto_sets["after"]),
        "data only": score(data),
        f"data+prototype (shipped, weight {PROTOTYPE_BLOCK_WEIGHT:g})": score(both),
    }
    # the prototype block's weight, the data block's fixed at 1
    blk = data.blocks[0]
    data_block = BlockData(
        "data",
        blk.vectors("image"),
        blk.vectors("text"),
        data.pairs().drop_columns(["block"]),
        powers=DATA_POWERS,
    )
    weights: dict[str, Any] = {}
    for pw in PROTO_WEIGHTS:
        proto = prototype_block(bench.img_enc, bench.txt_enc)
        proto.weight = pw
        aset = write_anchor_set(
            tmp / f"data+proto-w{pw:g}",
            anchor_kind="data+prototype",
            image_encoder=bench.img_enc.spec,
            text_encoder=bench.txt_enc.spec,
            blocks=[data_block, proto],
        )
        if pw == PROTOTYPE_BLOCK_WEIGHT:  # the same set build_data_anchors wrote
            assert aset.fingerprint == both.fingerprint, "weight grid differs from the build"
        weights[f"prototype weight {pw:g}"] = score(aset)
    out["results"] = res
    out["prototype_block_weight"] = weights
    return out


def linear_map_section(bench: Bench, tmp: Path) -> dict[str, Any]:
    """--linear-map: section 6's data anchors (from the cached features) with a ridge map
    from the text encoder's space to the image encoder's, mixed into the query side."""
    import pyarrow as pa
    import torch

    from vlmsearch.models.asif.anchors import BlockData, write_anchor_set
    from vlmsearch.models.asif.build import DATA_POWERS, PROTOTYPE_BLOCK_WEIGHT, prototype_block

    # the pairs section 6 writes to its CSV, in its order
    dev, test = np.arange(0, 300, 2), np.arange(1, 300, 2)
    others = np.setdiff1d(np.arange(1000), bench.cap_idx)
    rows = np.concatenate([bench.cap_idx[dev], others])
    captions = [bench.captions[j] for j in dev] + [bench.glosses[i] for i in others]
    paths = [str(bench.files[i]) for i in rows]
    # build_data_anchors' image vectors: encode_pixels(normalize=True), i.e. torch's
    # normalize of the raw features
    image_vectors = torch.nn.functional.normalize(torch.from_numpy(bench.raw[rows]), dim=-1).numpy()
    pairs = pa.table(
        {
            "anchor": pa.array(np.arange(len(rows)), pa.int64()),
            "image": pa.array(paths),
            "caption": pa.array(captions),
        }
    )
    t0 = time.perf_counter()
    sets = {}
    for label, with_proto in (("data only", False), ("data+prototype", True)):
        blocks = [BlockData("data", image_vectors, bench.memo(captions), pairs, powers=DATA_POWERS)]
        if with_proto:
            blocks.append(prototype_block(bench.img_enc, bench.txt_enc))
            blocks[-1].weight = PROTOTYPE_BLOCK_WEIGHT
        sets[label] = write_anchor_set(
            tmp / f"lm-{label.replace('+', '-').replace(' ', '-')}",
            anchor_kind="data+prototype" if with_proto else "data",
            image_encoder=bench.img_enc.spec,
            text_encoder=bench.txt_enc.spec,
            blocks=blocks,
        )
    build_s = round(time.perf_counter() - t0, 1)

    gal = bench.cap_idx[test]
    queries = bench.memo([bench.captions[j] for j in test])
    gal_rep = {label: a.relative("image", bench.raw[gal], K) for label, a in sets.items()}
    baseline = {
        label: a.relative("text", queries, K) @ gal_rep[label].T for label, a in sets.items()
    }
    blk = sets["data only"].blocks[0]
    X = blk.vectors("text").astype(np.float64)
    Y = blk.vectors("image").astype(np.float64)
    r_text = blk.relative("text", queries, K, None)
    r_proto = sets["data+prototype"].blocks[1].relative("text", queries, K, None)
    w_data, w_proto = (b.weight for b in sets["data+prototype"].blocks)

    def unit(v: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return np.divide(v, n, out=np.zeros_like(v), where=n > 0)

    def query_reps(r_img: np.ndarray, beta: float) -> dict[str, np.ndarray]:
        # the data block's part mixed; then AnchorSet.relative's weighting and renormalising
        mixed = unit(r_text + np.float32(beta) * r_img).astype(np.float32)
        both = unit(np.hstack([w_data * mixed, w_proto * r_proto])).astype(np.float32)
        return {"data only": mixed, "data+prototype": both}

    # beta 0: the sets' own text representations, and section 6's figures
    reference = json.loads(LM_REFERENCE.read_text(encoding="utf-8"))["data"]["results"]
    ref_key = {
        "data only": "data only",
        "data+prototype": f"data+prototype (shipped, weight {PROTOTYPE_BLOCK_WEIGHT:g})",
    }
    zero = query_reps(np.zeros_like(r_text), 0.0)
    checks: dict[str, Any] = {}
    for label, a in sets.items():
        own = a.relative("text", queries, K)
        diff = float(np.abs(zero[label] - own).max())
        got = recall(zero[label] @ gal_rep[label].T)
        assert diff < 1e-6, (label, diff)
        assert got == recall(baseline[label]), (label, got)
        assert got == reference[ref_key[label]], (label, got, reference[ref_key[label]])
        checks[label] = {
            "beta0_text_rep_max_abs_diff": diff,
            "beta0": got,
            "section6_reference": reference[ref_key[label]],
            "fingerprint": a.fingerprint,
        }

    t0 = time.perf_counter()
    xtx, xty = X.T @ X, X.T @ Y
    grid, fit = [], {}
    for lam in LM_LAMBDAS:
        m = np.linalg.solve(xtx + lam * np.eye(len(xtx)), xty)
        f_hat = unit(queries.astype(np.float64) @ m).astype(np.float32)
        r_img = blk.relative("image", f_hat, K, None)
        # how well the map lands: cosine of unit(t M) with the query's own photo's
        # features, its rank among the 150 gallery photos, and the anchors' fit
        g_unit = unit(bench.raw[gal].astype(np.float64))
        cos = f_hat @ g_unit.T
        fit[f"{lam:g}"] = {
            "test_cos_own_photo": float(np.diag(cos).mean()),
            "test_map_only_recall": recall(cos),
            "anchor_cos_own_image": float((unit(X @ m) * Y).sum(1).mean()),
        }
        for beta in LM_BETAS:
            reps = query_reps(r_img, beta)
            row: dict[str, Any] = {"beta": beta, "lambda": lam}
            for label in sets:
                row[label] = recall(reps[label] @ gal_rep[label].T)
            grid.append(row)
            if beta == 0.0:
                for label in sets:
                    assert row[label] == checks[label]["beta0"], (lam, label)
    return {
        "pairs": {"dev_hand_captions": len(dev), "glosses": len(others)},
        "test_queries": len(test),
        "gallery": len(gal),
        "anchors": {label: a.count for label, a in sets.items()},
        "block_weights": {"data": w_data, "prototypes": w_proto},
        "powers": {"data": blk.powers, "prototypes": sets["data+prototype"].blocks[1].powers},
        "map": {
            "X": "data anchors' MiniLM caption vectors (unit), 850 x " + str(X.shape[1]),
            "Y": "data anchors' EfficientNet-Lite0 image vectors (unit), 850 x " + str(Y.shape[1]),
            "M": "(X^T X + lambda I)^-1 X^T Y",
            "query": "unit(r_text(t) + beta * r_image(unit(t M))) over the data block",
        },
        "checks": checks,
        "map_fit": fit,
        "grid": grid,
        "build_sets_s": build_s,
        "grid_s": round(time.perf_counter() - t0, 1),
    }


def grid_section(bench: Bench, tmp: Path, shipped_fingerprint: str) -> list[dict[str, Any]]:
    from vlmsearch.models.asif import hierarchy as hier
    from vlmsearch.models.asif.anchors import write_anchor_set

    rows = []
    for pool, weight, max_classes, texts in itertools.product(
        GRID_POOL, GRID_WEIGHT, GRID_MAX_CLASSES, GRID_TEXTS
    ):
        t0 = time.perf_counter()
        block = hypernym_block(bench, pool, weight, max_classes, texts)
        name = f"pool{pool:g}-w{weight:g}-max{max_classes}-{texts}"
        aset = write_anchor_set(
            tmp / f"grid-{name}",
            anchor_kind="prototype",
            image_encoder=bench.img_enc.spec,
            text_encoder=bench.txt_enc.spec,
            blocks=[block],
        )
        shipped = (pool, weight, max_classes, texts) == (
            hier.GROUP_POOL,
            hier.GROUP_WEIGHT,
            hier.MAX_CLASSES,
            "lemma+gloss",
        )
        if shipped:  # the grid's builder reproduces build.prototype_block exactly
            assert aset.fingerprint == shipped_fingerprint, "grid block differs from recipe 2"
        res = bench.evaluate(aset)
        row = {
            "group_pool": pool,
            "group_weight": weight,
            "max_classes": max_classes,
            "texts": texts,
            "hypernyms": len(block.groups),
            "shipped": shipped,
            "summary": summary(res),
            "results": res,
        }
        rows.append(row)
        log(name, f"{time.perf_counter() - t0:.1f}s", json.dumps(row["summary"]))
    return rows


def fmt(v: float) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def print_table(before: dict[str, float], after: dict[str, float]) -> None:
    print(f"{'metric':<18} {'before':>7} {'after':>7} {'delta':>7}")
    for key in before:
        b, a = before[key], after[key]
        d = a - b
        print(f"{key:<18} {fmt(b):>7} {fmt(a):>7} {('+' if d >= 0 else '') + fmt(d):>7}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--grid", action="store_true", help="the hypernym design grid (section 7)")
    ap.add_argument(
        "--linear-map",
        action="store_true",
        help="data anchors with a ridge text->image map mixed into queries (section 8 only)",
    )
    ap.add_argument("--out", type=Path, help="write the results JSON here")
    args = ap.parse_args()
    if args.grid and args.linear_map:
        ap.error("--grid and --linear-map are separate runs")
    started = time.perf_counter()
    res: dict[str, Any] = {
        "benchmark": "bench_asif_words",
        "date": dt.date.today().isoformat(),
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average_start": list(os.getloadavg()),
    }
    from vlmsearch.models.asif import hierarchy as hier
    from vlmsearch.models.asif.build import PROTOTYPE_POWERS
    from vlmsearch.models.asif.encoder import DEFAULT_RECIPE

    bench = Bench(args)
    res["encoders"] = {"image": bench.img_enc.name, "text": bench.txt_enc.name}
    res["sample"] = {"photos": len(bench.files), "bundled": [p.name for p in bench.bundled]}
    res["settings"] = {
        "k": K,
        "powers": "each block's own (prototypes: " + json.dumps(PROTOTYPE_POWERS) + ")",
        "default_recipe": DEFAULT_RECIPE,
        "hypernyms": {
            "min_classes": hier.MIN_CLASSES,
            "max_classes": hier.MAX_CLASSES,
            "group_weight": hier.GROUP_WEIGHT,
            "group_pool": hier.GROUP_POOL,
        },
    }
    timings: dict[str, float] = {"image_features_s": round(bench.encode_s, 1)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-asif-words-"))
    if args.linear_map:
        t0 = time.perf_counter()
        res["linear_map"] = d = linear_map_section(bench, tmp)
        timings["linear_map_s"] = round(time.perf_counter() - t0, 1)
        print(
            f"data anchors + ridge map: {d['test_queries']} test hand captions,"
            f" gallery {d['gallery']} (beta 0 = section 6, checked)"
        )
        print(f"{'lambda':>6} {'beta':>5}   data only R@1/5/10    data+prototype R@1/5/10")
        for r in d["grid"]:
            a, b = r["data only"], r["data+prototype"]
            print(
                f"{r['lambda']:>6g} {r['beta']:>5g}   "
                + " ".join(f"{a[k]:.3f}" for k in a)
                + "   "
                + " ".join(f"{b[k]:.3f}" for k in b)
            )
        for lam, f in d["map_fit"].items():
            print(f"lambda {lam}: " + json.dumps(f))
    else:
        run_sections(args, bench, res, timings, tmp)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    res["timings"] = timings
    res["texts_encoded"] = bench.memo.encoded
    res["load_average_end"] = list(os.getloadavg())
    print(
        f"\ntotal {timings['total_s']}s; load average start {res['load_average_start']}"
        f" end {res['load_average_end']}"
    )
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def run_sections(
    args: argparse.Namespace,
    bench: Bench,
    res: dict[str, Any],
    timings: dict[str, float],
    tmp: Path,
) -> None:
    """Sections 1-5, then the data section (6) or the hypernym grid (7)."""
    from vlmsearch.models.asif.build import build_prototype_anchors

    t0 = time.perf_counter()
    sets = {
        "before": build_prototype_anchors(
            tmp / "recipe1", bench.img_enc, bench.txt_enc, hierarchy=False, recipe=1
        ),
        "after": build_prototype_anchors(
            tmp / "recipe2", bench.img_enc, bench.txt_enc, hierarchy=True, recipe=2
        ),
    }
    timings["build_prototype_sets_s"] = round(time.perf_counter() - t0, 1)
    res["checks"] = {"asif_encoder_recipe2": check_shipped_encoder(bench, sets["after"])}
    t0 = time.perf_counter()
    for label, aset in sets.items():
        res[label] = bench.evaluate(aset)
        res[label]["recipe"] = aset.recipe
        res[label]["fingerprint"] = aset.fingerprint
    timings["evaluate_s"] = round(time.perf_counter() - t0, 1)
    before, after = summary(res["before"]), summary(res["after"])
    res["summary"] = {"before": before, "after": after}
    print("ASIF prototype anchors: recipe 1 (classes) -> recipe 2 (classes + hypernyms)")
    print_table(before, after)
    print("OOD top-1:", json.dumps(res["after"]["ood"]["top1"]))

    if args.grid:
        t0 = time.perf_counter()
        rows = grid_section(bench, tmp, sets["after"].fingerprint)
        timings["grid_s"] = round(time.perf_counter() - t0, 1)
        res["grid"] = rows
        print("\ngrid (sorted by words R@10; * = shipped)")
        cols = list(before)
        head = "pool w   max  texts        hyps"
        print(head + "".join(f" {c[:10]:>10}" for c in cols))
        print(
            f"{'recipe 1 (before)':<{len(head)}}" + "".join(f" {fmt(before[c]):>10}" for c in cols)
        )
        for r in sorted(rows, key=lambda r: -r["summary"]["words R@10"]):
            s = r["summary"]
            lead = (
                f"{r['group_pool']:<4g} {r['group_weight']:<3g} {r['max_classes']:<4} "
                f"{r['texts']:<12} {r['hypernyms']:>3}{'*' if r['shipped'] else ' '}"
            )
            print(lead + "".join(f" {fmt(s[c]):>10}" for c in cols))
    else:
        t0 = time.perf_counter()
        res["data"] = data_section(bench, tmp, sets)
        timings["data_section_s"] = round(time.perf_counter() - t0, 1)
        d = res["data"]
        print(f"\ndata anchors: {d['test_queries']} test hand captions, gallery {d['gallery']}")
        for label, r in {**d["results"], **d["prototype_block_weight"]}.items():
            print(f"  {label:<36} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
