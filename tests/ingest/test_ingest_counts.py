"""Counts that agree (issue 15, item 5): a file whose mtime changed but whose bytes did
not is reported unchanged (it is not re-encoded), and the encode step's progress total
is the number of files encoded."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import TINY, draw_image
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions


def _index(root: Path) -> tuple[Collection, list[tuple[str, int, int]]]:
    calls: list[tuple[str, int, int]] = []
    coll = Collection.index(
        root,
        model=TINY,
        options=IngestOptions(batch_size=2, workers=0),
        device="cpu",
        progress=lambda phase, n, total: calls.append((phase, n, total)),
    )
    return coll, calls


def _encode_progress(calls: list[tuple[str, int, int]]) -> tuple[int, set[int]]:
    """(items advanced, totals shown) of the encode phase."""
    enc = [(n, total) for phase, n, total in calls if phase == "encode"]
    return sum(n for n, _ in enc), {total for _, total in enc}


def _touch(path: Path, seconds: float) -> None:
    t = time.time() + seconds
    os.utime(path, (t, t))


def test_touched_files_are_unchanged_and_progress_counts_what_is_encoded(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    # BMPs of one size: a redrawn one keeps its byte size, so only its hash can tell
    files = [draw_image(root / f"p{i}.bmp", (40 * i, 90, 200), (32, 24), seed=i) for i in range(6)]
    coll, calls = _index(root)
    assert coll.last_report.encoded == 6 and _encode_progress(calls) == (6, {6})

    _touch(files[0], 5)
    _touch(files[1], 5)
    size = files[2].stat().st_size
    draw_image(files[2], (1, 2, 3), (32, 24), seed=42)  # new bytes, same size
    assert files[2].stat().st_size == size
    draw_image(files[3], (9, 9, 9), (40, 30), seed=43)  # new bytes, new size
    draw_image(root / "n0.png", (200, 0, 0))
    draw_image(root / "n1.png", (0, 200, 0))
    coll, calls = _index(root)
    rep = coll.last_report
    assert (rep.new, rep.changed, rep.unchanged, rep.deleted) == (2, 2, 4, 0)
    assert rep.encoded == 4 and rep.errors == 0
    assert _encode_progress(calls) == (4, {4})  # the bar ends at 4/4, as the report says
    rows = {r["path"]: r for r in coll.table.to_pylist()}
    for f in files[:2]:  # re-dated in the metadata, so the next run need not hash them
        assert rows[f.name]["mtime_ns"] == f.stat().st_mtime_ns

    # a touch-only run: nothing is changed, nothing encoded, no encode step at all
    gen = coll.manifest["generation"]
    _touch(files[4], 9)
    coll, calls = _index(root)
    rep = coll.last_report
    assert (rep.new, rep.changed, rep.unchanged, rep.encoded) == (0, 0, 8, 0)
    assert _encode_progress(calls) == (0, set())
    row = {r["path"]: r for r in coll.table.to_pylist()}[files[4].name]
    assert row["mtime_ns"] == files[4].stat().st_mtime_ns
    assert coll.manifest["generation"] == gen + 1  # only the new dates were committed
    assert not coll.last_report.index_rebuilt
