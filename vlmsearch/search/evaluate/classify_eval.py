"""Zero-shot accuracy against known labels: from a metadata column, or from a regular
expression on each path (``n01440764_tench.JPEG`` -> ``tench``). The classes are the
distinct labels, prompted with the collection's templates; nothing is re-encoded."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import QueryError
from vlmsearch.models.encoders.base import TextEmbedder
from vlmsearch.models.label_cache import LazyTextEmbedder
from vlmsearch.models.zeroshot import RULES, class_scores, load_templates
from vlmsearch.results import ProgressFn
from vlmsearch.search.evaluate.report import EvalReport, Miss, worst
from vlmsearch.storage.reader import CollectionReader
from vlmsearch.storage.snapshot import on_one_commit

CONFUSED = 10  # most confused (true, predicted) pairs reported
BLOCK = 4096  # images scored at once
SAMPLE = 3


def check_label_source(column: str | None, pattern: str | None) -> re.Pattern[str] | None:
    """Exactly one of a column or a regex; the regex compiled (a bad one is one line)."""
    if (column is None) == (pattern is None):
        raise QueryError("give one of --labels-from COLUMN and --labels-from-path REGEX")
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise QueryError(f"--labels-from-path {pattern!r} is not a valid regex: {e}") from None


def label_of_path(regex: re.Pattern[str], path: str) -> str | None:
    """The regex's first group (or whole match) in ``path``, underscores as spaces."""
    m = regex.search(path)
    if m is None:
        return None
    text = m.group(1) if regex.groups else m.group(0)
    label = " ".join((text or "").replace("_", " ").split())
    return label or None


def true_labels(
    reader: CollectionReader, column: str | None, regex: re.Pattern[str] | None
) -> tuple[np.ndarray, list[str], dict[int, str]]:
    """The stored ids that have a label, their labels, and the paths of all stored ids."""
    if column is not None and column not in reader.column_names:
        have = ", ".join(c for c in reader.column_names if not c.startswith("_"))
        raise QueryError(f"--labels-from: no column {column!r} (columns: {have})")
    ids = reader.vectors.ids
    rows = reader.rows(ids)
    paths = {i: names.row_path(r) for i, r in rows.items()}
    labelled, labels = [], []
    for i in ids.tolist():
        if regex is not None:
            label = label_of_path(regex, paths.get(i, ""))
        else:
            value = rows.get(i, {}).get(column or "")
            label = str(value).strip() if value is not None else None
        if label:
            labelled.append(i)
            labels.append(label)
    if not labelled:
        where = f"column {column!r} is empty" if column else "the regex matched no path"
        sample = ", ".join(list(paths.values())[:SAMPLE])
        raise QueryError(f"no image has a label: {where} (paths: {sample})")
    return np.asarray(labelled, np.int64), labels, paths


@on_one_commit
def evaluate_classify(
    reader: CollectionReader,
    text_encoder: Callable[[], TextEmbedder],
    column: str | None = None,
    pattern: str | None = None,
    templates: str = "openai",
    rule: str = "mean",
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Top-1/top-5 accuracy over the distinct labels and the most confused pairs;
    everything is checked before ``text_encoder()`` is built."""
    regex = check_label_source(column, pattern)
    if rule not in RULES:
        raise QueryError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    tmpl = load_templates(templates)
    reader.require_vectors()
    ids, labels, paths = true_labels(reader, column, regex)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise QueryError(f"every labelled image has the label {classes[0]!r}: nothing to tell")
    number = {c: n for n, c in enumerate(classes)}
    truth = np.asarray([number[x] for x in labels])
    embedder = LazyTextEmbedder(text_encoder)
    spec = reader.manifest["encoder"]
    rank = np.empty(len(ids), np.int64)
    pred = np.empty(len(ids), np.int64)
    for lo in range(0, len(ids), BLOCK):
        vecs = reader.vectors.get(ids[lo : lo + BLOCK])
        scores = class_scores(embedder, vecs, classes, tmpl, rule, spec=spec)
        t = truth[lo : lo + BLOCK]
        rank[lo : lo + len(t)] = 1 + (scores > scores[np.arange(len(t)), t][:, None]).sum(axis=1)
        pred[lo : lo + len(t)] = np.where(rank[lo : lo + len(t)] == 1, t, scores.argmax(axis=1))
        if progress is not None:
            progress("classify", len(t), len(ids))
    metrics = _metrics(ids, rank, truth, pred, classes, len(reader.vectors))
    misses = [
        Miss(int(ids[n]), str(reader.root / paths.get(int(ids[n]), "")),
             f"{classes[truth[n]]} -> {classes[pred[n]]}", int(rank[n]))
        for n in np.flatnonzero(rank > 1)
    ]  # fmt: skip
    notes = [f"templates {templates}, rule {rule}"]
    return EvalReport("classify", metrics, notes, {"misclassified": worst(misses)})


def _metrics(
    ids: np.ndarray,
    rank: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    classes: list[str],
    stored: int,
) -> dict[str, Any]:
    """Accuracy figures, the most confused pairs and the worst classes."""
    wrong = Counter(
        (classes[t], classes[p])
        for t, p in zip(truth.tolist(), pred.tolist(), strict=True)
        if t != p
    )
    per_class = [
        (classes[c], float(np.mean(rank[truth == c] == 1)), int((truth == c).sum()))
        for c in range(len(classes))
    ]
    per_class.sort(key=lambda x: (x[1], x[0]))
    return {
        "images": len(ids),
        "unlabelled": stored - len(ids),
        "classes": len(classes),
        "top1": float(np.mean(rank == 1)),
        "top5": float(np.mean(rank <= 5)),
        "confused": [
            {"true": a, "predicted": b, "count": n} for (a, b), n in wrong.most_common(CONFUSED)
        ],
        "worst_classes": [
            {"label": a, "top1": acc, "images": n} for a, acc, n in per_class[:CONFUSED] if acc < 1
        ],
    }
