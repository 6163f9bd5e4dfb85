"""kill -9 while an on-disk index is merged and committed: the last committed state
opens and searches, nothing is lost or duplicated, and the next run cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.ingest.repair import check
from vlmsearch.storage import gc
from vlmsearch.storage.atomic import is_temp_name
from vlmsearch.storage.layout import Layout

# The child runs an index run that compacts (so it merges a new .ivfdata) and SIGKILLs
# itself at one point: inside the merge (lists written, not yet fsynced or renamed), after
# the lists got their generation name, or after the header, just before the manifest.
CHILD = """
import os, signal, sys
import faiss.contrib.ondisk as fo
from vlmsearch import Collection
from vlmsearch.ingest import ondisk_index
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage.ann import ondisk
from vlmsearch.storage.layout import Layout

ondisk_index.MAX_DELTAS = 0  # every run compacts: a full merge
point = sys.argv[3]

def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

def after(fn):
    def wrapped(*a, **k):
        fn(*a, **k)
        die()
    return wrapped

if point == "merge":
    fo.merge_ondisk = after(fo.merge_ondisk)
elif point == "renamed":
    ondisk.write_header = die
elif point == "header":
    original = Layout.write_manifest
    def write_manifest(self, m, previous=None):
        if (m.get("index") or {}).get("ondisk") and m["index"]["generation"] == m["generation"]:
            die()
        return original(self, m, previous)
    Layout.write_manifest = write_manifest
Collection.index(sys.argv[1], model=sys.argv[2], options=IngestOptions(workers=0))
"""

SPEC = "ondisk:IVF2,Flat"


def _ids_found(coll: Collection) -> list[int]:
    q = coll.vectors.vectors[0].astype(np.float32)
    return [h.id for h in coll.search_vector(q, k=500, params={"nprobe": 2})]


def _stray_files(folder) -> list[str]:
    """Files in the collection that its manifest neither names nor retired."""
    m = json.loads((folder / "manifest.json").read_text())
    known = gc.named_files(m) | {r["file"] for r in m.get("retired", [])}
    out = []
    for p in folder.iterdir():
        if p.is_file() and p.name not in ("manifest.json", ".lock") and p.name not in known:
            out.append(p.name)
    return sorted(out)


@pytest.mark.parametrize("point", ["merge", "renamed", "header"])
def test_sigkill_during_ondisk_merge(tmp_path, point):
    root = tmp_path / "photos"
    make_images(root, 90)
    Collection.index(root, model=TINY, options=IngestOptions(workers=0, index=SPEC))
    folder = root / ".vlmsearch"
    before = json.loads((folder / "manifest.json").read_text())

    make_images(root, 6, prefix="new")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), TINY, point], env=os.environ.copy()
    )
    assert proc.returncode == -9
    after_kill = json.loads((folder / "manifest.json").read_text())
    # the index commit did not happen; the committed index is the one from before
    assert after_kill["index"]["ondisk"] == before["index"]["ondisk"]
    coll = Collection.open(folder)
    assert not coll.index_is_stale or after_kill["data_generation"] > before["generation"]
    ids = _ids_found(coll)
    assert len(ids) == len(set(ids)) == len(coll.vectors.ids)  # nothing duplicated
    assert check(Layout(folder)).healthy

    # the next run finishes the job and leaves no stray file behind
    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0))
    coll = Collection.open(folder)
    ids = _ids_found(coll)
    assert len(ids) == len(set(ids)) == 96 == coll.faiss_index.ntotal  # nothing lost
    assert not coll.index_is_stale
    leftover = [n for n in _stray_files(folder) if not is_temp_name(n)]
    assert leftover == []
    assert not [p for p in folder.iterdir() if is_temp_name(p.name)]
