"""Zero-shot classification: of a collection's stored vectors (nothing is re-encoded), or
of image files encoded now."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import CollectionError, QueryError
from vlmsearch.models.choice import choose_encoder
from vlmsearch.models.encoders.base import Encoder, TextEmbedder
from vlmsearch.models.label_cache import LazyTextEmbedder
from vlmsearch.models.zeroshot import (
    RULES,
    class_scores,
    class_weights,
    load_templates,
    parse_labels,
    probabilities,
    softmax_scores,
)
from vlmsearch.results import Prediction
from vlmsearch.search.vector_search import sorted_intersection
from vlmsearch.storage.extra_writes import check_writable_columns
from vlmsearch.storage.reader import CollectionReader


def classify_stored(
    reader: CollectionReader,
    text_encoder: Callable[[], TextEmbedder],
    labels: str | Sequence[str],
    templates: str = "openai",
    top_k: int = 1,
    where: str | None = None,
    write_column: str | None = None,
    rule: str = "mean",
) -> tuple[list[Prediction], list[str]]:
    """Predictions for the stored vectors of the rows ``where`` allows, and the parsed
    labels. ``write_column`` is only checked here (before ``text_encoder()`` is built);
    ``text_encoder`` is not called at all when every label embedding is cached."""
    label_list = parse_labels(labels)
    if write_column:
        check_writable_columns(reader.layout, write_column, f"{write_column}_score")
    if rule not in RULES:
        raise QueryError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    tmpl = load_templates(templates)
    ids = reader.vectors.ids
    if where and where.strip():
        ids = sorted_intersection(reader.filter_ids(where), ids)
    probs = (
        softmax_scores(
            class_scores(
                LazyTextEmbedder(text_encoder),
                reader.vectors.get(ids),
                label_list,
                tmpl,
                rule,
                spec=reader.manifest["encoder"],
            )
        )
        if len(ids)
        else np.zeros((0, 0))
    )
    return predictions(ids, probs, label_list, top_k, reader.rows(ids), reader.root), label_list


def predictions(
    ids: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    top_k: int,
    rows: dict[int, dict[str, Any]],
    root: Path,
) -> list[Prediction]:
    """One prediction per id from its row of class probabilities: the best ``top_k``
    labels, the path from the id's metadata row."""
    out = []
    k = max(1, min(top_k, len(labels)))
    for n, i in enumerate(ids.tolist()):
        order = np.argsort(-probs[n])[:k]
        top = [(labels[j], float(probs[n, j])) for j in order]
        r = rows.get(i, {})
        rel = names.row_path(r) if r else ""
        out.append(Prediction(i, str(root / rel), top[0][0], top[0][1], top))
    return out


def classify_files(
    paths: Sequence[str | Path],
    labels: Sequence[str],
    *,
    model: str | None = None,
    encoder: Encoder | None = None,
    templates: str = "openai",
    top_k: int = 1,
    rule: str = "mean",
    batch_size: int = 64,
    workers: int | None = None,
    device: str | None = None,
    notices: list[str] | None = None,
) -> list[Prediction]:
    """Zero-shot classify image files (and folders, recursively), encoding them now.

    Args:
        paths: image files and folders.
        labels: the class names.
        model: the model to encode with when ``encoder`` is not given; the one
            :func:`vlmsearch.models.choice.choose_encoder` picks (why, when it is not
            the one asked for, is appended to ``notices``).
        encoder: an already-loaded encoder.
        templates: the prompt template set.
        top_k: how many labels each prediction lists.
        rule: ``mean`` (CLIP's averaged prompts) or ``best`` (ASIF's best prompt).
        batch_size, workers: decoding batches and processes (default: up to 4).
        device: where the chosen encoder runs.
        notices: collects lines for the user.
    """
    files = _image_files(paths)
    label_list = parse_labels(list(labels))
    enc = encoder
    if enc is None:
        choice = choose_encoder(model, None, device)
        enc = choice.encoder
        if notices is not None:
            notices += choice.notices
    tmpl = load_templates(templates)
    weights = class_weights(enc, label_list, tmpl, enc.spec) if rule == "mean" else None
    return _classify_decoded(
        files, enc, label_list, tmpl, rule, weights, top_k, batch_size, workers
    )


def _image_files(paths: Sequence[str | Path]) -> list[Path]:
    from vlmsearch.imaging.scan import scan

    files: list[Path] = []
    for p in (Path(x).expanduser() for x in paths):
        if p.is_dir():
            files += [p / f.path for f in scan(p)]
        elif p.exists():
            files.append(p)
        else:
            raise CollectionError(f"no such file or directory: {p}")
    if not files:
        raise CollectionError("no image files found in the given paths")
    return files


def _classify_decoded(
    files: list[Path],
    enc: Encoder,
    label_list: list[str],
    tmpl: Any,
    rule: str,
    weights: np.ndarray | None,
    top_k: int,
    batch_size: int,
    workers: int | None,
) -> list[Prediction]:
    from vlmsearch.imaging.decode import DecodeTask, iter_decoded

    tasks = [DecodeTask(i, str(f)) for i, f in enumerate(files)]
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    out: list[Prediction] = []
    for records, pixels in iter_decoded(tasks, enc.image_transform(), batch_size, n_workers):
        probs = None
        if pixels is not None:
            vecs = enc.encode_pixels(pixels)
            probs = (
                probabilities(vecs, weights)
                if weights is not None
                else softmax_scores(class_scores(enc, vecs, label_list, tmpl, rule, enc.spec))
            )
        row = 0
        for rec in records:
            if rec.error is not None:
                out.append(Prediction(None, str(files[rec.index]), None, None, [], rec.error))
                continue
            assert probs is not None
            pred = predictions(
                np.asarray([-1]), probs[row : row + 1], label_list, top_k, {}, Path("/")
            )[0]
            pred.id, pred.path = None, str(files[rec.index])
            out.append(pred)
            row += 1
    return out
