"""OCR over a collection's stored images: each row's image is read by its indexed path
(files and dataset-container members alike), decoded with EXIF orientation applied, and
read by an :class:`~vlmsearch.models.ocr.OcrEngine`. Results are committed every few
images, so an interrupted run keeps what it did and a new run resumes after it.

What is stored for an image that gives no text: a file that cannot be read (missing, on a
drive not mounted: an OSError) stores nothing, so the next run tries it again; bytes that
are not a decodable image store ``""``, like an image without text, so no run reads them
again. Both are reported in the result's ``error``.

Which rows: :func:`vlmsearch.caption.run.caption_targets` with ``kind="ocr"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.caption.run import BatchedWrites
from vlmsearch.imaging.decode import ImageDecodeError, decode_image
from vlmsearch.imaging.item_read import read_item
from vlmsearch.results import ProgressFn
from vlmsearch.storage.reader import CollectionReader

OcrValue = tuple[str, list[dict[str, Any]]]  # (text, lines as dicts)
WriteFn = Callable[[dict[int, OcrValue]], None]


@dataclass
class OcrResult:
    id: int
    path: str
    text: str | None  # None: the file could not be read (nothing stored; read next run)
    lines: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "path": self.path, "text": self.text, "lines": self.lines}
        if self.error is not None:
            d["error"] = self.error
        return names.readable_data(d)


def ocr_one(engine: Any, path: str) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """(text, lines, error) for one image, never an exception: a file that cannot be read
    gives None and its error; one that does not decode gives "" and its error."""
    try:
        data = read_item(path)
    except OSError as e:
        return None, [], f"cannot read the file: {e.strerror or e}"
    try:
        image = decode_image(data, name=path)[0]
    except ImageDecodeError as e:
        return "", [], str(e)
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
    images and once more at the end, also when interrupted (Ctrl-C keeps what is done);
    a failed commit's error says how many were kept. An image whose bytes do not decode
    is stored with empty text (so a resumed run does not retry it), a file that cannot be
    read is not stored (so it is); both have their error in their result."""
    out: list[OcrResult] = []
    rows = reader.rows(ids)
    with BatchedWrites(write, commit_every) as batch:
        for i in ids.tolist():
            r = rows.get(int(i))
            if r is None:  # deleted since the targets were chosen
                continue
            path = str(reader.root / names.row_path(r))
            text, lines, error = ocr_one(engine, path)
            out.append(OcrResult(int(i), path, text, lines, error))
            if text is not None:
                batch.add(int(i), (text, lines))
            if progress:
                progress("ocr", 1, len(ids))
    return out
