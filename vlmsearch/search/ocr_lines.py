"""The OCR line that made a hit match: for a search over an OCR column (``text_column``)
or filtered on one with ``LIKE``/``ILIKE``, each hit gets the line of its image that best
matches the query's words, with its box, as ``hit.extra["ocr_line"]``.

A post-processing step on the hits: the lines are already in each hit's metadata (the
``COLUMN_lines`` JSON that :meth:`~vlmsearch.storage.extra_writes.ExtraWriter.ocr_column`
writes), so nothing is read or encoded again. Words are compared case-insensitively; a
query word inside a line's word counts fully, otherwise the closest word by
:class:`difflib.SequenceMatcher` ratio counts when at least :data:`MIN_RATIO` (OCR
misreads a letter or two).
"""

from __future__ import annotations

import json
import re
from difflib import SequenceMatcher
from typing import Any

from vlmsearch.results import Hit
from vlmsearch.storage.reader import CollectionReader

MIN_RATIO = 0.75
_LIKE = re.compile(
    r'("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)\s+(?:NOT\s+)?I?LIKE\s+\'((?:[^\']|\'\')*)\'',
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)


def ocr_columns(reader: CollectionReader) -> list[str]:
    """The metadata columns that hold OCR text (manifest kind ``ocr``)."""
    columns = reader.manifest.get("columns") or {}
    return [c for c, e in columns.items() if (e or {}).get("kind") == "ocr"]


def like_patterns(where: str | None) -> dict[str, list[str]]:
    """``{column: [text between the wildcards, ...]}`` for each ``col [I]LIKE '...'``."""
    out: dict[str, list[str]] = {}
    for col, pattern in _LIKE.findall(where or ""):
        name = col[1:-1].replace('""', '"') if col.startswith('"') else col
        parts = re.split(r"[%_]+", pattern.replace("''", "'"))
        out.setdefault(name, []).extend(p for p in parts if p.strip())
    return out


def _word_score(needle: str, words: list[str], line: str) -> float:
    if needle in line:
        return 1.0
    return max((SequenceMatcher(None, needle, w).ratio() for w in words), default=0.0)


def best_line(lines: list[dict[str, Any]], needles: list[str]) -> dict[str, Any] | None:
    """The line matching most of ``needles`` (then the most confident); None when no
    needle comes close to any line."""
    needles = [n.lower() for n in needles if n.strip()]
    best, best_key = None, (0.0, 0.0)
    for ln in lines:
        text = str(ln.get("text", "")).lower()
        words = _WORD.findall(text)
        scores = [_word_score(n, words, text) for n in needles]
        total = sum(s for s in scores if s >= MIN_RATIO)
        key = (total, float(ln.get("score") or 0.0))
        if total > 0 and key > best_key:
            best, best_key = ln, key
    return best


def attach_lines(
    reader: CollectionReader,
    hits: list[Hit],
    query: str | None,
    where: str | None,
    text_column: str | None,
) -> list[Hit]:
    """Set ``hit.extra["ocr_line"]`` (column, text, box, score) on hits whose OCR line
    matches the query words or a ``LIKE`` pattern on an OCR column; others are unchanged."""
    cols = ocr_columns(reader)
    if not cols or not hits:
        return hits
    patterns = like_patterns(where)
    wanted: dict[str, list[str]] = {}
    for col in cols:
        needles = list(patterns.get(col, []))
        if col == text_column and query:
            needles += _WORD.findall(query)
        if needles:
            wanted[col] = needles
    for h in hits:
        for col, needles in wanted.items():
            raw = h.extra.get(f"{col}_lines")
            try:
                lines = json.loads(raw) if raw else []
            except ValueError:
                continue
            line = best_line(lines, needles)
            if line is not None:
                h.extra["ocr_line"] = {"column": col, **line}
                break
    return hits
