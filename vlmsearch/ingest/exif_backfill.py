"""EXIF columns for images indexed before ``index`` read them, without re-encoding.

New and changed images get their EXIF columns while they are decoded
(:mod:`vlmsearch.ingest.encode`). A collection whose manifest lacks a complete ``exif``
marker has rows without them: this step reads only the EXIF of each such image (the
file's header, not its pixels) and commits the values as column segments, a batch per
commit. The manifest's ``exif.cursor`` (the largest id done) makes a killed run resume
where it stopped, and ``exif.complete`` ends the step for good.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vlmsearch import names
from vlmsearch.imaging import exif, formats
from vlmsearch.ingest.options import IngestReport, ProgressFn
from vlmsearch.storage.store import CollectionWriter

MARKER = "exif"
VERSION = 1
BATCH = 1000


def backfill_exif(
    writer: CollectionWriter,
    root: Path,
    report: IngestReport,
    progress: ProgressFn | None = None,
    batch: int | None = None,
) -> int:
    """Read the EXIF columns of the committed ok rows that lack them; returns how many
    images were read. Runs before the scan, so a new collection is simply marked done."""
    state = writer.manifest.get(MARKER) or {}
    if state.get("complete"):
        return 0
    cursor = int(state.get("cursor", -1))
    ids = writer.ok_ids()
    ids = ids[ids > cursor]
    if not len(ids):
        # recorded by the run's next commit (a new collection: its first checkpoint)
        writer.manifest[MARKER] = {"version": VERSION, "complete": True}
        return 0
    t0 = time.perf_counter()
    batch = batch or BATCH
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        rows = writer.view.rows_for(chunk, "id, path, path_bytes").to_pylist()
        values = [formats.file_exif(str(root / names.row_path(r))) for r in rows]
        got = np.asarray([r["id"] for r in rows], np.int64)
        writer.set_columns(got, exif.to_columns(values))
        done = start + batch >= len(ids)
        writer.manifest[MARKER] = (
            {"version": VERSION, "complete": True}
            if done
            else {"version": VERSION, "cursor": int(chunk[-1])}
        )
        writer.commit(data_changed=False)
        if progress:
            progress("exif", len(chunk), len(ids))
    report.notices.append(
        f"EXIF columns read for {len(ids)} indexed images in "
        f"{time.perf_counter() - t0:.1f} s (no image re-encoded)"
    )
    return len(ids)
