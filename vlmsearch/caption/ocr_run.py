"""OCR over a collection's stored images: each row's image is read by its indexed path
(files and dataset-container members alike), decoded with EXIF orientation applied, and
read by an :class:`~vlmsearch.models.ocr.OcrEngine`. Results are committed every few
images, so an interrupted run keeps what it did and a new run resumes after it.

Which rows: :func:`vlmsearch.caption.run.caption_targets` with ``kind="ocr"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.imaging.decode import ImageDecodeError, load_image
from vlmsearch.results import ProgressFn
from vlmsearch.storage.reader import CollectionReader

OcrValue = tuple[str, list[dict[str, Any]]]  # (text, lines as dicts)
WriteFn = Callable[[dict[int, OcrValue]], None]


@dataclass
class OcrResult:
    id: int
    path: str
    text: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "path": self.path, "text": self.text, "lines": self.lines}
        if self.error is not None:
            d["error"] = self.error
        return names.readable_data(d)


def ocr_one(engine: Any, path: str) -> tuple[str, list[dict[str, Any]], str | None]:
    """(text, lines, error) for one image; an image that cannot be read or decoded gives
    empty text and its error, never an exception."""
    try:
        image = load_image(path)
    except ImageDecodeError as e:  # its message starts with the path: shown beside it
        return "", [], str(e).removeprefix(f"{path}: ")
    lines = [ln.to_dict() for ln in engine.read(image)]
    return "\n".join(ln["text"] for ln in lines), lines, None


def ocr_stored(
    reader: CollectionReader,
    engine: Any,
    ids: np.ndarray,
    write: WriteFn | None = None,
    commit_every: int = 8,
    progress: ProgressFn | None = None,
) -> list[OcrResult]:
    """OCR each id's image. With ``write``, results are passed on every ``commit_every``
    images and once more at the end, also when interrupted (Ctrl-C keeps what is done).
    An unreadable image is stored with empty text (so a resumed run does not retry it)
    and its error is returned in its result."""
    out: list[OcrResult] = []
    pending: dict[int, OcrValue] = {}
    rows = reader.rows(ids)
    try:
        for i in ids.tolist():
            r = rows.get(int(i))
            if r is None:  # deleted since the targets were chosen
                continue
            path = str(reader.root / names.row_path(r))
            text, lines, error = ocr_one(engine, path)
            out.append(OcrResult(int(i), path, text, lines, error))
            pending[int(i)] = (text, lines)
            if write is not None and len(pending) >= commit_every:
                write(pending)
                pending.clear()
            if progress:
                progress("ocr", 1, len(ids))
    finally:
        if write is not None and pending:
            write(pending)
    return out
