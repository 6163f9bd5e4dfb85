"""Crash safety: SIGKILL an indexing subprocess mid-run, then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions

CHILD = """
import sys
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
Collection.index(sys.argv[1], model=sys.argv[2],
                 options=IngestOptions(batch_size=2, workers=0, commit_every=2))
"""


def _committed_files(manifest_path) -> int:
    try:
        return json.loads(manifest_path.read_text())["counts"]["files"]
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_mid_run_then_resume(tmp_path):
    root = tmp_path / "photos"
    total = 400
    make_images(root, total)
    manifest = root / ".vlmsearch" / "manifest.json"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), TINY], env=os.environ.copy())
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if _committed_files(manifest) >= 20:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the indexing run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    committed = _committed_files(manifest)
    assert 0 < committed < total

    # the last committed state opens and searches
    partial = Collection.open(root / ".vlmsearch")
    assert len(partial.table) == committed
    assert len(partial.search_vector(partial.vectors.vectors[0].astype("float32"), k=3)) == 3

    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0))
    rep = coll.last_report
    assert rep.unchanged == committed  # committed work is not re-encoded
    assert rep.encoded == total - committed
    paths = coll.table["path"].to_pylist()
    ids = coll.table["id"].to_pylist()
    assert len(paths) == len(set(paths)) == total  # every file exactly once
    assert len(ids) == len(set(ids))
    assert coll.faiss_index.ntotal == total and not coll.index_is_stale
    leftovers = [p.name for p in (root / ".vlmsearch").rglob(".*.tmp")]
    assert leftovers == []


COMPACT_CHILD = """
import sys
from pathlib import Path
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.maintenance import compact_collection
while True:
    compact_collection(Layout(sys.argv[1]), force=True)
"""


def test_sigkill_during_compaction_keeps_the_last_commit(tmp_path):
    """kill -9 while compactions commit one after another: the last committed state
    opens and searches, every file once, nothing lost or duplicated."""
    root = tmp_path / "photos"
    make_images(root, 40)
    opts = IngestOptions(batch_size=4, workers=0, commit_every=4)
    coll = Collection.index(root, model=TINY, options=opts)
    for p in sorted(root.glob("*.png"))[:5]:
        p.unlink()
    coll = Collection.index(root, model=TINY, options=opts)
    want = sorted(coll.table["path"].to_pylist())
    gen0 = coll.manifest["generation"]
    manifest = coll.path / "manifest.json"
    proc = subprocess.Popen([sys.executable, "-c", COMPACT_CHILD, str(coll.path)])
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads(manifest.read_text())["generation"] >= gen0 + 3:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.001)
        assert proc.poll() is None, "the compacting process stopped by itself"
        time.sleep(0.05)  # somewhere inside the next compaction
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    after = Collection.open(coll.path)
    paths = after.table["path"].to_pylist()
    assert sorted(paths) == want  # nothing lost, nothing duplicated
    assert after.manifest["counts"]["files"] == len(want) and not after.manifest["tombstones"]
    q = after.vectors.vectors[0].astype("float32")
    assert len(after.search_vector(q, k=3)) == 3
    again = Collection.index(root, model=TINY, options=opts)
    assert again.last_report.encoded == 0 and sorted(again.table["path"].to_pylist()) == want
