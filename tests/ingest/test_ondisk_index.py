"""A collection with an on-disk index: built at the end of a run, opened memory-mapped,
extended by the next run with a delta and dead ids, compacted past the thresholds."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.ingest import ondisk_index
from vlmsearch.ingest.options import IngestOptions

SPEC = "ondisk:IVF2,Flat"  # 2 lists: nprobe 2 scans all, so results are exact


def _check_exact(coll: Collection, k: int = 10) -> None:
    """Hits score as an exact scan's top k (ids may differ among equal scores: a few
    test images are drawn twice)."""
    vt = coll.vectors
    for row in (0, 7, len(vt.ids) - 1):
        q = vt.vectors[row].astype(np.float32)
        hits = coll.search_vector(q, k=k, params={"nprobe": 2})
        exact = np.sort(vt.vectors.astype(np.float32) @ q)[::-1][:k]
        np.testing.assert_allclose([h.score for h in hits], exact, rtol=1e-5, atol=1e-6)
        got = dict(zip(vt.ids.tolist(), (vt.vectors.astype(np.float32) @ q).tolist(), strict=True))
        np.testing.assert_allclose([got[h.id] for h in hits], exact, rtol=1e-5, atol=1e-6)


def test_ondisk_build_extend_compact(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_images(root, 100)
    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0, index=SPEC))
    m = json.loads((root / ".vlmsearch" / "manifest.json").read_text())
    od = m["index"]["ondisk"]
    assert m["index"]["storage"] == "ondisk" and od["ivfdata"].endswith(".ivfdata")
    assert od["deltas"] == [] and od["dead"] is None
    coll = Collection.open(root / ".vlmsearch")
    base = coll.faiss_index.base_index
    assert isinstance(
        faiss.downcast_InvertedLists(faiss.extract_index_ivf(base).invlists),
        faiss.OnDiskInvertedLists,
    )
    _check_exact(coll)

    # new, changed and deleted files: a delta and dead ids, committed files untouched
    make_images(root, 5, prefix="new")
    (root / "img0003.png").unlink()
    make_images(root, 2, prefix="img", sizes=[(64, 64)])  # img0000, img0001 re-encoded
    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0))
    m2 = json.loads((root / ".vlmsearch" / "manifest.json").read_text())
    od2 = m2["index"]["ondisk"]
    assert od2["ivfdata"] == od["ivfdata"] and len(od2["deltas"]) == 1 and od2["dead"]
    assert coll.last_report.index_rebuilt is False
    coll = Collection.open(root / ".vlmsearch")
    assert coll.faiss_index.ntotal == len(coll.vectors.ids) == 104
    _check_exact(coll)
    gone = int(m["next_id"]) - 100 + 3  # img0003's id: the fourth file indexed
    all_hits = coll.search_vector(coll.vectors.vectors[0].astype(np.float32), k=200)
    ids = [h.id for h in all_hits]
    assert len(ids) == len(set(ids)) == 104  # re-encoded ids once, deleted ids never
    assert gone not in ids

    # past the delta threshold: compacted into a new .ivfdata with no deltas
    monkeypatch.setattr(ondisk_index, "MAX_DELTAS", 1)
    make_images(root, 3, prefix="more")
    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0))
    od3 = json.loads((root / ".vlmsearch" / "manifest.json").read_text())["index"]["ondisk"]
    assert od3["ivfdata"] != od["ivfdata"] and od3["deltas"] == [] and od3["dead"] is None
    assert od3["trained"] == od["trained"]  # compaction reuses the trained index
    coll = Collection.open(root / ".vlmsearch")
    assert coll.faiss_index.ntotal == 107
    _check_exact(coll)


def test_ondisk_filtered_search_reads_no_vector_table(tmp_path):
    """A filter on an on-disk index searches the lists with an id selector (nprobe
    widened, then every list): it never loads the stored vectors into RAM."""
    root = tmp_path / "photos"
    make_images(root, 100)
    Collection.index(root, model=TINY, options=IngestOptions(workers=0, index=SPEC))
    coll = Collection.open(root / ".vlmsearch")
    q = np.ones(coll.dim, np.float32) / np.sqrt(coll.dim)
    hits = coll.search_vector(q, k=5, where="width >= 45")
    assert len(hits) == 5
    assert all(coll.rows([h.id])[h.id]["width"] >= 45 for h in hits)
    assert coll.reader.loaded_vectors is None


def test_ondisk_damage_found_by_check_and_repaired(tmp_path):
    """Readers check the memory-mapped lists by size only; `check` hashes them, and
    `check --repair` rebuilds the index from the stored vectors."""
    from vlmsearch.ingest.repair import check, repair
    from vlmsearch.storage.layout import Layout

    root = tmp_path / "photos"
    make_images(root, 100)
    Collection.index(root, model=TINY, options=IngestOptions(workers=0, index=SPEC))
    folder = root / ".vlmsearch"
    m = json.loads((folder / "manifest.json").read_text())
    lists = folder / m["index"]["ondisk"]["ivfdata"]
    data = bytearray(lists.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    lists.write_bytes(bytes(data))
    report = check(Layout(folder))
    bad = [f for f in report.files if f.status == "damaged"]
    assert [f.name for f in bad] == [lists.name] and bad[0].kind == "on-disk index"
    repaired = repair(Layout(folder))
    assert repaired.healthy
    coll = Collection.open(folder)
    assert coll.manifest["index"]["ondisk"]["ivfdata"] != lists.name
    _check_exact(coll)

    lists = folder / coll.manifest["index"]["ondisk"]["ivfdata"]
    with open(lists, "r+b") as f:
        f.truncate(lists.stat().st_size - 8)
    with pytest.raises(CollectionError, match="truncated"):
        Collection.open(folder).search_vector(np.ones(coll.dim, np.float32), k=3)
