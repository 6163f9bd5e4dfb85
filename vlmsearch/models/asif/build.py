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
from vlmsearch.models.asif.anchors import AnchorSet, check_destination, write_anchor_set
from vlmsearch.models.unimodal import ImageEncoder, TextEncoder

ProgressFn = Callable[[str, int, int], None]

PROTOTYPE_TEMPLATE = "a photo of a {}."  # the ASIF prototype caption, "a photo of a {class}"
# Powers recorded with prototype anchors, measured on the ImageNet sample with
# benchmarks/bench_asif.py --per-side (RESULTS.md): the image side is a softmax, already
# sharp, while MiniLM cosines to 1000 "a photo of a {class}." prompts are compressed into a
# narrow band and need a high power. (2, 16) beat (4, 4) on text->image R@10 (0.729 vs 0.704)
# and zero-shot top-5 (97.2% vs 92.8%). Data anchors keep p=4 on both sides.
PROTOTYPE_POWERS = {"image": 2.0, "text": 16.0}

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


def build_prototype_anchors(
    out: str | Path,
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    templates: str = PROTOTYPE_TEMPLATE,
    overwrite: bool = False,
) -> AnchorSet:
    check_destination(out, overwrite)
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
    pairs = pa.table(
        {
            "anchor": pa.array(np.arange(n), pa.int64()),
            "image": pa.array([f"class:{i}" for i in range(n)]),
            "caption": pa.array(captions),
            "class_index": pa.array(np.arange(n), pa.int64()),
            "class_name": pa.array(list(clf.class_names)),
        }
    )
    return write_anchor_set(
        out,
        anchor_kind="prototype",
        image_encoder=image_encoder.spec,
        text_encoder=text_encoder.spec,
        image_vectors=image_vectors,
        text_vectors=text_vectors,
        pairs=pairs,
        image_similarity="softmax",
        text_similarity="cosine",
        source={"classifier": image_encoder.name, "classes": n, "templates": templates},
        overwrite=overwrite,
        powers=PROTOTYPE_POWERS,
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
) -> tuple[AnchorSet, list[tuple[str, str]]]:
    """Encode a captioned source into an anchor set; returns it and the images that could
    not be decoded (their pairs are left out)."""
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
    aset = write_anchor_set(
        out,
        anchor_kind="data",
        image_encoder=image_encoder.spec,
        text_encoder=text_encoder.spec,
        image_vectors=image_vectors,
        text_vectors=text_vectors,
        pairs=pairs,
        source={**desc, "pairs_read": len(paths), "images_failed": len(failed)},
        overwrite=overwrite,
    )
    return aset, failed
