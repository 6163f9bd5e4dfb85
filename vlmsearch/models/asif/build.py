"""Building ASIF anchor sets: from a classifier head (prototypes) or from captioned images.

- Prototype anchors need no data: the rows of a classifier's last layer act as image
  anchors, paired with the texts "a photo of a {class}" (ASIF notes,
  notes/algorithms.md). The image side then scores by the classifier's softmax.
- Data anchors come from any captioned source: a collection whose metadata has a
  caption column, or a CSV/Parquet file of (image path, caption) rows; several rows
  may name the same image (one pair per caption).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlmsearch import names
from vlmsearch.errors import CollectionError, ModelError, QueryError
from vlmsearch.models.asif import hierarchy as hier
from vlmsearch.models.asif.anchors import (
    AnchorSet,
    BlockData,
    check_destination,
    write_anchor_set,
)
from vlmsearch.models.unimodal import ImageEncoder, TextEncoder

ProgressFn = Callable[[str, int, int], None]

PROTOTYPE_TEMPLATE = "a photo of a {}."  # the ASIF prototype caption, "a photo of a {class}"
# Powers recorded with prototype anchors, measured on the ImageNet sample with
# benchmarks/bench_asif.py --per-side (RESULTS.md): the image side is a softmax, already
# sharp, while MiniLM cosines to 1000 "a photo of a {class}." prompts are compressed into a
# narrow band and need a high power. (2, 16) beat (4, 4) on text->image R@10 (0.729 vs 0.704)
# and zero-shot top-5 (97.2% vs 92.8%). Data anchors keep p=4 on both sides.
PROTOTYPE_POWERS = {"image": 2.0, "text": 16.0}
DATA_POWERS = {"image": 4.0, "text": 4.0}  # relative.DEFAULT_P, measured for data anchors
# Data anchors and prototype anchors side by side: each block's ASIF score counts with its
# weight squared. Measured (bench_asif_words.py, RESULTS.md "Data anchors"): on 150 held-out
# hand-captioned sample photos, 850 data anchors alone reach R@10 0.807 and with the
# prototype block 0.947-0.953 for weights 0.5-2 (prototypes alone 0.960 there: the photos
# are ImageNet classes, the prototypes' home ground). 1.0 (equal) ships, since data
# anchors describe the user's own domain.
PROTOTYPE_BLOCK_WEIGHT = 1.0
# Platt calibration of the default recipe-2 scores (EfficientNet-Lite0 + MiniLM, k=800,
# p 2/16), fitted on held-out pairs: the even-numbered queries of four query sets on the
# ImageNet sample (everyday words, hand captions, class names, WordNet glosses); checked
# on the odd-numbered ones (benchmarks/bench_calibration.py, RESULTS.md "Calibrated scores").
DEFAULT_CALIBRATION = {
    "method": "platt",
    "a": 25.471,
    "b": -6.1,
    "k": 800,
    "p_image": 2.0,
    "p_text": 16.0,
    "fitted_on": "benchmarks/bench_calibration.py (ImageNet sample, held-out query halves)",
}
DEFAULT_PAIR = ("efficientnet-lite0", "minilm")

IMAGE_COLUMNS = (
    "image", "path", "file", "filepath", "image_path", "filename", "file_name", "image_file",
    "image_name", "img", "img_path",
)  # fmt: skip
CAPTION_COLUMNS = ("caption", "text", "captions", "sentence", "comment", "description", "raw")


def prompt_embeddings(
    text_encoder: TextEncoder, names: Sequence[str], templates: str = PROTOTYPE_TEMPLATE
) -> tuple[np.ndarray, list[str]]:
    """One text vector per class: a single template (a string with ``{}``) or the mean of a
    template set (``openai``/``simple``/a file, as in zero-shot classification)."""
    if "{}" in templates and not Path(templates).expanduser().is_file():
        texts = [templates.format(n) for n in names]
        return text_encoder.encode_texts(texts), texts
    from vlmsearch.models.zeroshot import load_templates

    tmpl = load_templates(templates)
    emb = text_encoder.encode_texts([t(n) for n in names for t in tmpl])
    mean = emb.reshape(len(names), len(tmpl), -1).mean(axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    return mean.astype(np.float32), [tmpl[0](n) for n in names]


def _mean_embeddings(text_encoder: TextEncoder, groups: Sequence[Sequence[str]]) -> np.ndarray:
    """One unit vector per group of texts: the mean of their embeddings."""
    flat = [t for g in groups for t in g]
    emb = text_encoder.encode_texts(flat)
    out, i = np.zeros((len(groups), emb.shape[1]), np.float32), 0
    for j, g in enumerate(groups):
        out[j] = emb[i : i + len(g)].mean(axis=0)
        i += len(g)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def prototype_block(
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    templates: str = PROTOTYPE_TEMPLATE,
    hierarchy: bool = True,
) -> BlockData:
    """The classifier's rows paired with "a photo of a {class}", plus (``hierarchy``, for a
    1000-class ImageNet head) one anchor per WordNet hypernym covering several classes."""
    clf = image_encoder.classifier()
    if clf is None:
        raise ModelError(
            f"image encoder {image_encoder.name} has no classification head; prototype "
            "anchors need one (e.g. efficientnet-lite0), or build data anchors with --from"
        )
    # logits = f @ W^T + b, as an inner product of [f, 1] with [W, b]
    image_vectors = np.hstack([clf.weight, clf.bias[:, None]]).astype(np.float32)
    text_vectors, captions = prompt_embeddings(text_encoder, clf.class_names, templates)
    n = len(clf.class_names)
    cols: dict[str, list[Any]] = {
        "image": [f"class:{i}" for i in range(n)],
        "caption": list(captions),
        "class_index": list(range(n)),
        "class_name": list(clf.class_names),
        "wordnet_id": [None] * n,
    }
    groups: list[list[int]] = []
    if hierarchy and n == hier.IMAGENET_CLASSES:
        template = templates if "{}" in templates else PROTOTYPE_TEMPLATE
        hyps = hier.hypernyms()
        texts = [hier.hypernym_texts(h, template) for h in hyps]
        text_vectors = np.vstack([text_vectors, _mean_embeddings(text_encoder, texts)])
        groups = [list(h.classes) for h in hyps]
        cols["image"] += [f"classes:{h.wnid}" for h in hyps]
        cols["caption"] += [t[0] for t in texts]
        cols["class_index"] += [None] * len(hyps)
        cols["class_name"] += [h.lemmas[0] for h in hyps]
        cols["wordnet_id"] += [h.wnid for h in hyps]
    count = len(cols["image"])
    pairs = pa.table(
        {
            "anchor": pa.array(np.arange(count), pa.int64()),
            "image": pa.array(cols["image"]),
            "caption": pa.array(cols["caption"]),
            "class_index": pa.array(cols["class_index"], pa.int64()),
            "class_name": pa.array(cols["class_name"]),
            "wordnet_id": pa.array(cols["wordnet_id"], pa.string()),
        }
    )
    return BlockData(
        "prototypes" if groups else "prototype",
        image_vectors,
        text_vectors.astype(np.float32),
        pairs,
        image_similarity="softmax",
        powers=PROTOTYPE_POWERS,
        groups=groups or None,
        group_weight=hier.GROUP_WEIGHT,
        group_pool=hier.GROUP_POOL,
    )


def build_prototype_anchors(
    out: str | Path,
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    templates: str = PROTOTYPE_TEMPLATE,
    overwrite: bool = False,
    hierarchy: bool = True,
    recipe: int | None = None,
) -> AnchorSet:
    """Prototype anchors; ``hierarchy`` adds WordNet hypernym anchors (ImageNet-1k heads).
    ``recipe`` marks a default set (see ``encoder.DEFAULT_RECIPE``)."""
    check_destination(out, overwrite)
    block = prototype_block(image_encoder, text_encoder, templates, hierarchy)
    n_classes = len(block.image_vectors)
    source = {"classifier": image_encoder.name, "classes": n_classes, "templates": templates}
    source["hypernyms"] = len(block.groups or [])
    if recipe is not None:
        source["recipe"] = recipe
    calibrated = recipe == 2 and (image_encoder.name, text_encoder.name) == DEFAULT_PAIR
    return write_anchor_set(
        out,
        anchor_kind="prototype",
        image_encoder=image_encoder.spec,
        text_encoder=text_encoder.spec,
        blocks=[block],
        source=source,
        overwrite=overwrite,
        calibration=DEFAULT_CALIBRATION if calibrated else None,
    )


def read_captioned_source(
    source: str | Path, image_column: str | None = None, caption_column: str | None = None
) -> tuple[list[str], list[str], dict[str, Any]]:
    """(absolute image paths, captions, description) from a collection or a CSV/Parquet
    file. Relative image paths in a file are taken from the file's folder."""
    src = Path(source).expanduser().absolute()
    if (src / "manifest.json").is_file() or (src / ".vlmsearch" / "manifest.json").is_file():
        from vlmsearch.storage.layout import Layout
        from vlmsearch.storage.reader import CollectionReader

        # the stored metadata alone: no encoder, vectors or index is loaded
        coll = CollectionReader(
            Layout(src if (src / "manifest.json").is_file() else src / ".vlmsearch")
        )
        col = caption_column or "caption"
        if col not in coll.table.column_names:
            raise QueryError(
                f"collection {coll.path} has no column {col!r} (columns: "
                f"{', '.join(coll.table.column_names)}); pass --caption-column"
            )
        table = coll.table.filter(pa.compute.equal(coll.table["status"], "ok"))
        paths = [str(coll.root / p) for p in names.column_paths(table)]
        base, caps = _explode(paths, table[col].to_pylist())
        return base, caps, {"collection": str(coll.path), "caption_column": col}
    if not src.is_file():
        raise CollectionError(f"no such file or collection: {src}")
    suffix = src.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pacsv.read_csv(src, parse_options=parse)
        elif suffix in (".jsonl", ".json"):
            import pyarrow.json as pajson

            table = pajson.read_json(src)
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(src)
        else:
            raise QueryError(
                f"{src}: expected a .csv, .tsv, .jsonl or .parquet file of (image, caption) rows"
            )
    except (pa.ArrowInvalid, OSError) as e:
        raise QueryError(f"cannot read {src}: {str(e).splitlines()[0]}") from None
    img_col = image_column or _pick(table.column_names, IMAGE_COLUMNS, src, "image")
    cap_col = caption_column or _pick(table.column_names, CAPTION_COLUMNS, src, "caption")
    for c in (img_col, cap_col):
        if c not in table.column_names:
            raise QueryError(f"{src} has no column {c!r} (columns: {table.column_names})")
    paths = [
        str((src.parent / str(p)).resolve()) if p is not None else ""
        for p in table[img_col].to_pylist()
    ]
    base, caps = _explode(paths, table[cap_col].to_pylist())
    return base, caps, {"file": str(src), "image_column": img_col, "caption_column": cap_col}


def _pick(columns: Sequence[str], candidates: Sequence[str], src: Path, what: str) -> str:
    for c in candidates:
        if c in columns:
            return c
    raise QueryError(
        f"{src}: no {what} column found (looked for {', '.join(candidates)}; "
        f"columns are {', '.join(columns)}); pass --{what}-column"
    )


def _explode(paths: list[str], captions: list[Any]) -> tuple[list[str], list[str]]:
    """One (path, caption) per caption; list cells give several captions per image."""
    out_p: list[str] = []
    out_c: list[str] = []
    for p, c in zip(paths, captions, strict=True):
        items = c if isinstance(c, list | tuple) else [c]
        for cap in items:
            if p and cap is not None and str(cap).strip():
                out_p.append(p)
                out_c.append(str(cap).strip())
    if not out_p:
        raise QueryError("the source has no (image, caption) rows with a non-empty caption")
    return out_p, out_c


def build_data_anchors(
    out: str | Path,
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    source: str | Path,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
    prototypes: bool | None = None,
) -> tuple[AnchorSet, list[tuple[str, str]]]:
    """Encode a captioned source into an anchor set; returns it and the images that could
    not be decoded (their pairs are left out). ``prototypes`` (default: when the image
    encoder has a classifier head) adds the prototype anchors as a second block."""
    if prototypes is None:
        prototypes = image_encoder.classifier() is not None
    elif prototypes and image_encoder.classifier() is None:
        raise ModelError(
            f"image encoder {image_encoder.name} has no classification head, so it has no "
            "prototype anchors to add; build without --prototypes"
        )
    from vlmsearch.imaging.decode import DecodeTask, iter_decoded

    check_destination(out, overwrite)
    paths, captions, desc = read_captioned_source(source, image_column, caption_column)
    unique = list(dict.fromkeys(paths))
    tasks = [DecodeTask(i, p) for i, p in enumerate(unique)]
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    feats = np.zeros((len(unique), image_encoder.dim), np.float32)
    ok = np.zeros(len(unique), bool)
    failed: list[tuple[str, str]] = []
    for records, pixels in iter_decoded(
        tasks, image_encoder.image_transform(), batch_size, n_workers
    ):
        good = [r.index for r in records if r.error is None]
        failed += [(unique[r.index], str(r.error)) for r in records if r.error is not None]
        if pixels is not None:
            feats[good] = image_encoder.encode_pixels(pixels)
            ok[good] = True
        if progress:
            progress("images", len(records), len(unique))
    row_of = {p: i for i, p in enumerate(unique)}
    keep = [j for j, p in enumerate(paths) if ok[row_of[p]]]
    if not keep:
        raise CollectionError(f"none of the {len(unique)} anchor images could be decoded")
    texts = [captions[j] for j in keep]
    text_vectors = np.zeros((len(texts), text_encoder.dim), np.float32)
    step = 1024
    for i in range(0, len(texts), step):
        text_vectors[i : i + step] = text_encoder.encode_texts(texts[i : i + step])
        if progress:
            progress("captions", min(step, len(texts) - i), len(texts))
    image_vectors = feats[[row_of[paths[j]] for j in keep]]
    pairs = pa.table(
        {
            "anchor": pa.array(np.arange(len(keep)), pa.int64()),
            "image": pa.array([paths[j] for j in keep]),
            "caption": pa.array(texts),
        }
    )
    blocks = [BlockData("data", image_vectors, text_vectors, pairs, powers=DATA_POWERS)]
    if prototypes:
        blocks.append(prototype_block(image_encoder, text_encoder))
        blocks[-1].weight = PROTOTYPE_BLOCK_WEIGHT
    aset = write_anchor_set(
        out,
        anchor_kind="data+prototype" if prototypes else "data",
        image_encoder=image_encoder.spec,
        text_encoder=text_encoder.spec,
        blocks=blocks,
        source={**desc, "pairs_read": len(paths), "images_failed": len(failed)},
        overwrite=overwrite,
    )
    return aset, failed
