#!/usr/bin/env python
"""ASIF quality and scale on real data: EfficientNet-Lite0 + all-MiniLM-L6-v2 (both ship
inside PyPI packages), through vlmsearch's own anchor sets and relative representations.

Sections (all on ``../shared/data/imagenet-sample``: 1000 JPEGs, one per ImageNet class):

1. **Zero-shot classification with prototype anchors** (classifier rows paired with
   "a photo of a {class}."), 1000 classes, top-1/top-5; prompt rules ``mean`` and ``best``
   with CLIP's 80 templates, and the single anchor prompt.
2. **Unseen-class split with data anchors**: anchors are the images of 500 classes
   captioned "a photo of a {class}."; the other 500 images are classified among the other
   500 classes.
3. **Text->image recall@1/5/10** on a captioned set built here: each image's caption is
   the WordNet gloss of its synset (e.g. tabby: "a cat with a grey or tawny coat mottled
   with black"), which rarely names the class. Needs WordNet's ``data.noun``:
   ``apt-get download wordnet-base && dpkg -x wordnet-base_*.deb wn`` then
   ``--wordnet wn/usr/share/wordnet/data.noun``. Prototype anchors search all 1000 images;
   data anchors (500 images with their glosses) search the other 500, and prototype
   anchors are reported on the same 500 for comparison.
4. **Grid over k and p** for the defaults.
5. **Scale**: 100k images x 10k anchors, k=800: posting-list search (what ASIF
   collections use) against a dense FAISS flat index over the anchor space.

Run: ``python benchmarks/bench_asif.py --wordnet PATH [--out results.json]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.models.asif.relative import DEFAULT_K, DEFAULT_P

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
CACHE = REPO / "benchmarks" / ".cache"


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def sample_files(root: Path) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    wnids = [p.name.split("_")[0] for p in files]
    if len(set(wnids)) != len(wnids):
        raise SystemExit("expected one image per class")
    return files, wnids


def image_features(img_enc: Any, files: list[Path]) -> np.ndarray:
    """Raw (unnormalised) image features, cached by encoder identity."""
    from vlmsearch.imaging.decode import DecodeTask, iter_decoded

    key = str(img_enc.spec.get("sha256", img_enc.name))[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"feats-{img_enc.kind}-{key}-{len(files)}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    out = np.zeros((len(files), img_enc.dim), np.float32)
    tasks = [DecodeTask(i, str(f)) for i, f in enumerate(files)]
    for recs, pixels in iter_decoded(tasks, img_enc.image_transform(), 50, 2):
        idx = [r.index for r in recs if r.error is None]
        out[idx] = img_enc.encode_pixels(pixels, normalize=False)
    log(f"encoded {len(files)} images in {time.perf_counter() - t0:.1f}s")
    np.save(path, out)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def topk_acc(scores: np.ndarray, truth: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    order = np.argsort(-scores, axis=1)
    return {f"top{k}": float((order[:, :k] == truth[:, None]).any(axis=1).mean()) for k in ks}


def recall(scores: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """scores: (queries, gallery), query i's match is gallery item i."""
    rank = (scores > scores[np.arange(len(scores)), np.arange(len(scores))][:, None]).sum(1)
    return {f"R@{k}": float((rank < k).mean()) for k in ks}


def glosses(data_noun: Path, wnids: list[str]) -> list[str]:
    want = {w[1:]: w for w in wnids}
    found: dict[str, str] = {}
    with open(data_noun, encoding="utf-8", errors="replace") as f:
        for line in f:
            off = line[:8]
            if off in want and "|" in line:
                found[want[off]] = line.split("|", 1)[1].strip().split(";")[0].strip()
    missing = [w for w in wnids if w not in found]
    if missing:
        raise SystemExit(f"{len(missing)} synsets missing from {data_noun}")
    return [found[w] for w in wnids]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--wordnet", type=Path, help="WordNet data.noun (for section 3)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--scale-n", type=int, default=100_000)
    ap.add_argument("--scale-anchors", type=int, default=10_000)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-dense", action="store_true", help="scale: skip the dense FAISS peer")
    ap.add_argument("--only-scale", action="store_true", help="run section 5 only")
    ap.add_argument(
        "--per-side",
        action="store_true",
        help="run section 6 only: separate powers per side, and the shipped defaults",
    )
    args = ap.parse_args()
    if args.only_scale:
        out = scale(args.scale_n, args.scale_anchors, DEFAULT_K, DEFAULT_P, not args.skip_dense)
        out["date"] = dt.date.today().isoformat()
        out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
        text = json.dumps({"scale": out}, indent=2)
        if args.out:
            args.out.write_text(text)
        print(text)
        return

    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from vlmsearch.models.asif.build import build_prototype_anchors
    from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder
    from vlmsearch.models.zeroshot import load_templates

    files, wnids = sample_files(args.sample)
    truth = np.argsort(np.argsort(wnids))  # ImageNet class index = rank of the wnid
    names = list(IMAGENET_CLASSNAMES)
    img_enc = load_image_encoder("efficientnet-lite0", device="cpu")
    txt_enc = load_text_encoder("minilm", device="cpu")
    _encode = txt_enc.encode_texts
    memo: dict[tuple[str, ...], np.ndarray] = {}

    def encode_texts(texts: Any) -> np.ndarray:  # the grid re-asks for the same prompts
        key = tuple(texts)
        if key not in memo:
            memo[key] = _encode(list(texts))
        return memo[key]

    txt_enc.encode_texts = encode_texts  # type: ignore[method-assign]
    raw = image_features(img_enc, files)
    feats = unit(raw)
    tmp = Path(tempfile.mkdtemp(prefix="bench-asif-"))
    if args.per_side:
        res6 = per_side(args, img_enc, txt_enc, raw, feats, wnids, truth, names, files)
        text = json.dumps(res6, indent=2)
        if args.out:
            args.out.write_text(text)
        print(text)
        return
    res: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "encoders": {"image": img_enc.name, "text": txt_enc.name},
        "sample": str(args.sample),
    }

    # plain classifier, for reference
    clf = img_enc.classifier()
    res["classifier"] = topk_acc(raw @ clf.weight.T + clf.bias, truth)
    log("classifier", res["classifier"])

    proto = build_prototype_anchors(tmp / "proto", img_enc, txt_enc)
    single = ["a photo of a {}.".format]
    openai = load_templates("openai")

    def text_rel(aset: Any, texts: list[str], k: int, p: float) -> np.ndarray:
        return aset.relative("text", txt_enc.encode_texts(texts), k, p)

    def classify(
        aset: Any,
        img_rel: np.ndarray,
        labels: list[str],
        templates: list,
        rule: str,
        k: int,
        p: float,
    ) -> np.ndarray:
        emb = txt_enc.encode_texts([t(c) for c in labels for t in templates])
        rel = aset.relative("text", emb, k, p).reshape(len(labels), len(templates), -1)
        if rule == "mean":
            w = rel.mean(axis=1)
            w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
            return img_rel @ w.T
        return np.einsum("nd,ctd->nct", img_rel, rel).max(axis=2)

    # 1. prototype zero-shot, default k/p
    K, P = DEFAULT_K, 8.0  # the official p; the grid below compares p values
    img_rel = proto.relative("image", raw, K, P)
    z1: dict[str, Any] = {}
    for label, templates, rule in (
        ("single prompt", single, "mean"),
        ("openai templates, mean (CLIP rule)", openai, "mean"),
        ("openai templates, best (ASIF rule)", openai, "best"),
    ):
        z1[label] = topk_acc(classify(proto, img_rel, names, templates, rule, K, P), truth)
        log("prototype", label, z1[label])
    res["prototype_zero_shot_k800_p8"] = z1

    # 2. unseen-class split with data anchors
    rng = np.random.default_rng(0)
    perm = rng.permutation(1000)
    a_idx, b_idx = np.sort(perm[:500]), np.sort(perm[500:])
    import pyarrow as pa

    from vlmsearch.models.asif.anchors import write_anchor_set

    def data_anchors(path: Path, idx: np.ndarray, captions: list[str]) -> Any:
        return write_anchor_set(
            path,
            anchor_kind="data",
            image_encoder=img_enc.spec,
            text_encoder=txt_enc.spec,
            image_vectors=feats[idx],
            text_vectors=txt_enc.encode_texts(captions),
            pairs=pa.table(
                {
                    "anchor": np.arange(len(idx)),
                    "image": [str(files[i]) for i in idx],
                    "caption": captions,
                }
            ),
        )

    split_anchors = data_anchors(
        tmp / "split", a_idx, [f"a photo of a {names[truth[i]]}." for i in a_idx]
    )
    b_labels = [names[truth[i]] for i in b_idx]  # one image per class: B's classes
    b_truth = np.arange(500)
    z2: dict[str, Any] = {}
    for k in (50, 100, 200, 500):
        for p in (1.0, 2.0, 4.0, 8.0):
            rel_b = split_anchors.relative("image", feats[b_idx], k, p)
            for label, templates, rule in (
                ("single", single, "mean"),
                ("openai-mean", openai, "mean"),
                ("openai-best", openai, "best"),
            ):
                if label != "single" and (k, p) not in ((500, 8.0), (200, 4.0), (100, 2.0)):
                    continue
                s = classify(split_anchors, rel_b, b_labels, templates, rule, k, p)
                z2[f"k={k} p={p:g} {label}"] = topk_acc(s, b_truth)
    res["data_anchor_split_500_unseen"] = z2
    best2 = max(z2.items(), key=lambda kv: kv[1]["top1"])
    log("split best", best2)

    # 4. grid for prototype zero-shot (single prompt) and 3. gloss recall
    grid: dict[str, Any] = {}
    caps = glosses(args.wordnet, wnids) if args.wordnet else None
    cap_emb = txt_enc.encode_texts(caps) if caps else None
    gloss_anchors = data_anchors(tmp / "gloss", a_idx, [caps[i] for i in a_idx]) if caps else None
    for k in (10, 50, 100, 200, 400, 800):
        for p in (1.0, 2.0, 4.0, 8.0, 16.0):
            row: dict[str, Any] = {}
            ir = proto.relative("image", raw, k, p)
            row["proto_zero_shot"] = topk_acc(
                classify(proto, ir, names, single, "mean", k, p), truth
            )
            if caps is not None:
                tr = proto.relative("text", cap_emb, k, p)
                row["proto_gloss_1000"] = recall(tr @ ir.T)
                row["proto_gloss_B500"] = recall(tr[b_idx] @ ir[b_idx].T)
                kk = min(k, 500)
                dir_ = gloss_anchors.relative("image", feats[b_idx], kk, p)
                dtr = gloss_anchors.relative("text", cap_emb[b_idx], kk, p)
                row["data_gloss_B500"] = recall(dtr @ dir_.T)
            grid[f"k={k} p={p:g}"] = row
            log(f"k={k} p={p:g}", json.dumps(row))
    res["grid"] = grid

    if not args.skip_scale:
        res["scale"] = scale(
            args.scale_n, args.scale_anchors, DEFAULT_K, DEFAULT_P, not args.skip_dense
        )
    text = json.dumps(res, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


def per_side(
    args: Any,
    img_enc: Any,
    txt_enc: Any,
    raw: np.ndarray,
    feats: np.ndarray,
    wnids: list[str],
    truth: np.ndarray,
    names: list[str],
    files: list[Path],
) -> dict[str, Any]:
    """Section 6: a power per side, through the anchor sets and AsifEncoder defaults."""
    import pyarrow as pa

    from vlmsearch.models.asif.anchors import write_anchor_set
    from vlmsearch.models.asif.build import build_prototype_anchors

    if not args.wordnet:
        raise SystemExit("--per-side needs --wordnet")
    tmp = Path(tempfile.mkdtemp(prefix="bench-asif-sides-"))
    caps = glosses(args.wordnet, wnids)
    cap = txt_enc.encode_texts(caps)
    prompts = txt_enc.encode_texts([f"a photo of a {c}." for c in names])
    proto = build_prototype_anchors(tmp / "proto", img_enc, txt_enc)
    perm = np.random.default_rng(0).permutation(1000)
    a_idx, b_idx = np.sort(perm[:500]), np.sort(perm[500:])
    data = write_anchor_set(
        tmp / "data",
        anchor_kind="data",
        image_encoder=img_enc.spec,
        text_encoder=txt_enc.spec,
        image_vectors=feats[a_idx],
        text_vectors=cap[a_idx],
        pairs=pa.table(
            {
                "anchor": np.arange(500),
                "image": [str(files[i]) for i in a_idx],
                "caption": [caps[i] for i in a_idx],
            }
        ),
    )
    # the unseen-class split of section 2: anchors "a photo of a {class}." of split A
    a_prompts = [f"a photo of a {names[truth[i]]}." for i in a_idx]
    data_split = write_anchor_set(
        tmp / "split", anchor_kind="data", image_encoder=img_enc.spec,
        text_encoder=txt_enc.spec, image_vectors=feats[a_idx],
        text_vectors=txt_enc.encode_texts(a_prompts),
        pairs=pa.table({"anchor": np.arange(500), "image": [str(files[i]) for i in a_idx],
                        "caption": a_prompts}),
    )  # fmt: skip
    split_prompts = txt_enc.encode_texts([f"a photo of a {names[truth[i]]}." for i in b_idx])
    out: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "recommended": {"prototype": proto.powers, "data": data.powers},
        "prototype": {},
        "data": {},
    }
    for pi, pt in ((4, 4), (8, 8), (2, 16), (2, 8), (1, 8), (2, 4)):
        ir = proto.relative("image", raw, DEFAULT_K, pi)
        tr = proto.relative("text", cap, DEFAULT_K, pt)
        zs = ir @ proto.relative("text", prompts, DEFAULT_K, pt).T
        out["prototype"][f"p_image={pi} p_text={pt}"] = {
            "gloss_1000": recall(tr @ ir.T),
            "zero_shot": topk_acc(zs, truth),
        }
        split = (
            data_split.relative("image", feats[b_idx], 100, pi)
            @ data_split.relative("text", split_prompts, 100, pt).T
        )
        out["data"][f"p_image={pi} p_text={pt}"] = {
            "unseen_split_zero_shot_k100": topk_acc(split, np.arange(500))
        }
        dr = recall(
            data.relative("text", cap[b_idx], 500, pt)
            @ data.relative("image", feats[b_idx], 500, pi).T
        )
        out["data"][f"p_image={pi} p_text={pt}"]["gloss_B500"] = dr
        log(pi, pt, out["prototype"][f"p_image={pi} p_text={pt}"], dr)
    return out


def scale(n: int, n_anchors: int, k: int, p: float, dense: bool) -> dict[str, Any]:
    """Search cost for n images x n_anchors anchors: posting lists vs dense FAISS."""
    import faiss
    import scipy.sparse as sp

    from vlmsearch.models.asif.relative import relative_representations
    from vlmsearch.storage.ann import faiss_store
    from vlmsearch.storage.ann.plan import plan_index
    from vlmsearch.storage.ann.postings import PostingIndex

    rng = np.random.default_rng(0)
    d = 384
    centres = rng.normal(size=(200, d))
    anchors = unit(centres[rng.integers(0, 200, n_anchors)] + rng.normal(size=(n_anchors, d)))
    idx = faiss_store.build_index(
        plan_index("flat", n_anchors, d), d, np.arange(n_anchors), anchors
    )
    out: dict[str, Any] = {"images": n, "anchors": n_anchors, "k": k, "p": p}
    t0 = time.perf_counter()
    blocks = []
    for lo in range(0, n, 5000):
        m = min(5000, n - lo)
        x = unit(centres[rng.integers(0, 200, m)] + rng.normal(size=(m, d)))
        blocks.append(sp.csr_matrix(relative_representations(idx, x, n_anchors, k, p)))
    mat = sp.vstack(blocks, format="csr")
    out["encode_relative_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    post = PostingIndex.build(np.arange(n), mat)
    out["postings_build_s"] = round(time.perf_counter() - t0, 2)
    out["postings_mb"] = round((post.csc.data.nbytes + post.csc.indices.nbytes) / 2**20, 1)
    qs = [
        relative_representations(
            idx, unit(centres[rng.integers(0, 200, 1)] + rng.normal(size=(1, d))), n_anchors, k, p
        )[0]
        for _ in range(20)
    ]
    times = []
    allowed = np.arange(0, n, 3)
    for q in qs:
        t = time.perf_counter()
        post.search(q, 10)
        times.append(time.perf_counter() - t)
    out["postings_search_ms_p50"] = round(1000 * float(np.median(times)), 2)
    times = []
    for q in qs:
        t = time.perf_counter()
        post.search(q, 10, allowed)
        times.append(time.perf_counter() - t)
    out["postings_filtered_search_ms_p50"] = round(1000 * float(np.median(times)), 2)
    log("scale postings", out)
    if dense:
        flat = faiss.IndexFlatIP(n_anchors)
        t0 = time.perf_counter()
        for lo in range(0, n, 5000):
            flat.add(np.ascontiguousarray(mat[lo : lo + 5000].toarray()))
        out["dense_build_s"] = round(time.perf_counter() - t0, 2)
        out["dense_mb"] = round(n * n_anchors * 4 / 2**20, 1)
        times = []
        for q in qs[:5]:
            t = time.perf_counter()
            _, ids = flat.search(q[None].astype(np.float32), 10)
            times.append(time.perf_counter() - t)
        out["dense_search_ms_p50"] = round(1000 * float(np.median(times)), 2)
        s, i = post.search(qs[0], 10)
        _, ids = flat.search(qs[0][None].astype(np.float32), 10)
        out["same_top10"] = bool(set(i.tolist()) == set(ids[0].tolist()))
        del flat
        log("scale dense", out)
    return out


if __name__ == "__main__":
    main()
