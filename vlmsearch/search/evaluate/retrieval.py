"""Text->image and image->text retrieval on a captions file: each caption is a query
whose right answer is its image (among every image of the collection), and each image a
query whose right answer is the best of its captions (among every caption of the file)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import QueryError
from vlmsearch.models.encoders.base import TextEmbedder
from vlmsearch.results import ProgressFn
from vlmsearch.search.evaluate.calibrate_fit import fit_calibration
from vlmsearch.search.evaluate.report import EvalReport, Miss, rank_summary, ranks_of, worst
from vlmsearch.storage.reader import CollectionReader
from vlmsearch.storage.snapshot import on_one_commit

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "json"}
TEXT_BATCH = 256
SCORE_CELLS = 1 << 25  # query x candidate scores held at once (128 MB of float32)
SAMPLE = 5  # unmatched paths named
MIN_CALIBRATION_CAPTIONS = 10  # fewer: half of them cannot check the fit


def read_captions(path: str | Path) -> tuple[list[str], list[str]]:
    """The (path, caption) rows of a CSV, Parquet or JSON-lines file; rows with an empty
    path or caption are dropped. Bad files are one-line errors."""
    p = Path(path).expanduser()
    kind = READERS.get(p.suffix.lower())
    if kind is None:
        raise QueryError(f"--captions {path}: give a .csv, .parquet or .jsonl file")
    if not p.is_file():
        raise QueryError(f"--captions {path}: no such file")
    table = _read_table(p, kind)
    missing = [c for c in ("path", "caption") if c not in table.column_names]
    if missing:
        have = ", ".join(table.column_names) or "none"
        raise QueryError(f"--captions {path} has no {' or '.join(missing)} column (has: {have})")
    pairs = [
        (str(a).strip(), str(b).strip())
        for a, b in zip(table["path"].to_pylist(), table["caption"].to_pylist(), strict=True)
        if a is not None and b is not None and str(a).strip() and str(b).strip()
    ]
    if not pairs:
        raise QueryError(f"--captions {path} has no row with both a path and a caption")
    return [a for a, _ in pairs], [b for _, b in pairs]


def _read_table(p: Path, kind: str) -> Any:
    import pyarrow as pa

    try:
        if kind == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(p)
        if kind == "json":
            import pyarrow.json as pjson

            return pjson.read_json(p)
        import pyarrow.parquet as pq

        return pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QueryError(f"cannot read --captions {p}: {first}") from None


def match_paths(reader: CollectionReader, paths: list[str]) -> list[int | None]:
    """The stored id of each path (relative to the collection's root, or absolute under
    it), None where it is not an indexed image with a vector."""
    ids = reader.vectors.ids
    by_path = {names.row_path(r): i for i, r in reader.rows(ids).items()}
    roots = {str(reader.root), os.path.realpath(reader.root)}
    out: list[int | None] = []
    for raw in paths:
        rel = os.path.normpath(raw)
        if os.path.isabs(rel):
            rel = next((os.path.relpath(rel, r) for r in roots if _under(rel, r)), rel)
        out.append(by_path.get(PurePath(rel).as_posix()))
    return out


def _under(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


@on_one_commit
def evaluate_retrieval(
    reader: CollectionReader,
    text_encoder: Callable[[], TextEmbedder],
    captions_file: str | Path,
    progress: ProgressFn | None = None,
    calibrate: bool = False,
) -> EvalReport:
    """R@1/5/10 and median rank both ways; the file is read and matched before
    ``text_encoder()`` is built. ``calibrate``: also fit a score calibration on the pairs
    (``metrics["calibration"]``; the caller stores it)."""
    paths, captions = read_captions(captions_file)
    reader.require_vectors()
    found = match_paths(reader, paths)
    keep = [n for n, i in enumerate(found) if i is not None]
    notes = []
    unmatched = sorted({paths[n] for n, i in enumerate(found) if i is None})
    if unmatched:
        sample = ", ".join(unmatched[:SAMPLE])
        what = (
            "path is not an indexed image"
            if len(unmatched) == 1
            else "paths are not indexed images"
        )
        notes.append(f"{len(unmatched)} {what}, skipped (e.g. {sample})")
    if not keep:
        raise QueryError(
            f"none of the paths in --captions {captions_file} is an indexed image of "
            f"{reader.root} (e.g. {unmatched[0]}); give paths relative to it"
        )
    if calibrate and len(keep) < MIN_CALIBRATION_CAPTIONS:
        raise QueryError(
            f"--calibrate needs at least {MIN_CALIBRATION_CAPTIONS} captions of indexed "
            f"images (found {len(keep)}): a fit on fewer is not checked on held-out captions"
        )
    texts = [captions[n] for n in keep]
    answer = np.asarray([found[n] for n in keep], np.int64)
    vecs = embed(text_encoder(), texts, progress)
    table = reader.vectors
    t2i, t2i_misses = _text_to_image(reader, table, vecs, texts, answer, progress)
    i2t, i2t_misses = _image_to_text(reader, table, vecs, texts, answer, progress)
    metrics = {
        "captions": len(texts),
        "images": int(len(np.unique(answer))),
        "gallery": len(table),
        "unmatched": len(unmatched),
        "text_to_image": t2i,
        "image_to_text": i2t,
    }
    if calibrate:
        encoder = reader.manifest.get("encoder") or {}
        metrics["calibration"] = fit_calibration(table, vecs, answer, encoder, str(captions_file))
    misses = {"text to image": worst(t2i_misses), "image to text": worst(i2t_misses)}
    return EvalReport("retrieval", metrics, notes, misses)


def embed(encoder: TextEmbedder, texts: list[str], progress: ProgressFn | None) -> np.ndarray:
    """L2-normalised text embeddings, a batch at a time."""
    parts = []
    for lo in range(0, len(texts), TEXT_BATCH):
        batch = texts[lo : lo + TEXT_BATCH]
        parts.append(np.asarray(encoder.encode_texts(batch), np.float32))
        if progress is not None:
            progress("embed", len(batch), len(texts))
    v = np.concatenate(parts)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)


def _text_to_image(
    reader: CollectionReader,
    table: Any,
    vecs: np.ndarray,
    texts: list[str],
    answer: np.ndarray,
    progress: ProgressFn | None,
) -> tuple[dict[str, Any], list[Miss]]:
    """Each caption against every stored image: the rank of its own image."""
    images = table.get(table.ids)  # float32 rows, or a CSR matrix (ASIF)
    pos = table.positions(answer)
    block = max(1, SCORE_CELLS // max(1, len(table)))
    ranks, firsts = [], []
    for lo in range(0, len(texts), block):
        scores = np.asarray(images @ vecs[lo : lo + block].T).T  # captions x images
        right = scores[np.arange(len(scores)), pos[lo : lo + block]]
        ranks.append(ranks_of(scores, right))
        firsts.append(table.ids[scores.argmax(axis=1)])
        if progress is not None:
            progress("t2i", len(scores), len(texts))
    rank, first = np.concatenate(ranks), np.concatenate(firsts)
    misses = [
        Miss(int(answer[n]), "", texts[n], int(rank[n]), str(int(first[n])))
        for n in np.flatnonzero(rank > 1)
    ]
    return rank_summary(rank), _with_paths(reader, worst(misses), got_is_id=True)


def _image_to_text(
    reader: CollectionReader,
    table: Any,
    vecs: np.ndarray,
    texts: list[str],
    answer: np.ndarray,
    progress: ProgressFn | None,
) -> tuple[dict[str, Any], list[Miss]]:
    """Each captioned image against every caption: the rank of its best own caption."""
    image_ids, owner = np.unique(answer, return_inverse=True)
    block = max(1, SCORE_CELLS // max(1, len(texts)))
    ranks, best_own, firsts = [], [], []
    for lo in range(0, len(image_ids), block):
        ids = image_ids[lo : lo + block]
        scores = np.asarray(table.get(ids) @ vecs.T)  # images x captions
        own = owner[None, :] == np.arange(lo, lo + len(ids))[:, None]
        masked = np.where(own, scores, -np.inf)
        right = masked.max(axis=1)
        ranks.append(ranks_of(scores, right))
        best_own.append(masked.argmax(axis=1))
        firsts.append(scores.argmax(axis=1))
        if progress is not None:
            progress("i2t", len(ids), len(image_ids))
    rank, own_n, first = (np.concatenate(x) for x in (ranks, best_own, firsts))
    misses = [
        Miss(int(image_ids[n]), "", texts[own_n[n]], int(rank[n]), texts[first[n]])
        for n in np.flatnonzero(rank > 1)
    ]
    return rank_summary(rank), _with_paths(reader, worst(misses))


def _with_paths(
    reader: CollectionReader, misses: list[Miss], got_is_id: bool = False
) -> list[Miss]:
    """Fill each miss's absolute path (and, for ``got_is_id``, name the image that came
    first instead of its id)."""
    wanted = [m.id for m in misses] + ([int(m.got) for m in misses] if got_is_id else [])
    rows = reader.rows(np.asarray(wanted, np.int64))
    rel = {i: names.row_path(r) for i, r in rows.items()}
    for m in misses:
        m.path = str(reader.root / rel.get(m.id, ""))
        if got_is_id:
            m.got = rel.get(int(m.got), m.got)
    return misses
