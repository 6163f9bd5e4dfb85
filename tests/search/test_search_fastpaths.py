"""Search fast paths (issue 6): the cached metadata filter, row lookup by binary search,
and build-time tuning recorded in the manifest. Behaviour only, no timings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.errors import QueryError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.search.vector_search import sorted_intersection
from vlmsearch.storage import metadata
from vlmsearch.storage.ann import tune


@pytest.fixture
def coll(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 120, sizes=[(40, 32), (64, 48), (33, 33)])
    return Collection.index(
        root, model=TINY, options=IngestOptions(workers=0, index="flat"), device="cpu"
    )


def test_filtered_search_returns_only_allowed_ids_and_k_of_them(coll):
    q = coll.encoder.encode_texts(["a red square"])[0]
    allowed = set(coll.table.filter(pa.compute.equal(coll.table["width"], 33))["id"].to_pylist())
    for _ in range(2):  # the second call reuses the cached DuckDB copy
        hits = coll.search_vector(q, k=7, where="width = 33")
        assert len(hits) == 7 and {h.id for h in hits} <= allowed
    assert coll._filter is not None and coll._filter.table is coll.table


def test_filter_cache_follows_commits(coll):
    coll.classify(["red", "green", "blue"], write_column="colour")
    # the table was replaced by the commit: the new column must be visible to filters
    ids = coll.filter_ids("colour IS NOT NULL")
    assert len(ids) == len(coll) and coll._filter.table is coll.table
    with pytest.raises(QueryError, match="not found"):
        coll.filter_ids("no_such_column > 1")


def test_metadata_filter_matches_a_fresh_one_and_sorts(coll):
    table = coll.table
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    with metadata.MetadataFilter(shuffled) as f:
        got = f.ids("width >= 40")
    assert np.array_equal(got, metadata.filter_ids(table, "width >= 40"))
    assert np.all(np.diff(got) > 0)
    with pytest.raises(QueryError, match="not allowed"):
        metadata.filter_ids(table, "1=1; DROP TABLE metadata")


def test_rows_by_binary_search_in_any_table_order(coll):
    want = coll.rows([5, 1, 3, 10_000])  # an unknown id is left out
    assert sorted(want) == [1, 3, 5] and want[3]["id"] == 3
    coll.table = coll.table.take(pa.array(np.arange(coll.table.num_rows)[::-1]))
    again = coll.rows([5, 1, 3, 10_000])
    assert again == want


def test_sorted_intersection():
    a = np.array([1, 4, 7, 9], np.int64)
    assert sorted_intersection(a, np.array([0, 4, 9, 12], np.int64)).tolist() == [4, 9]
    assert sorted_intersection(a, np.zeros(0, np.int64)).tolist() == []


def test_tuned_params_are_recorded_and_used(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "TUNE_MIN_VECTORS", 300)  # tune a small index
    monkeypatch.setattr(tune, "TUNE_QUERIES", 64)
    root = tmp_path / "photos"
    make_images(root, 400)
    c = Collection.index(root, model=TINY, options=IngestOptions(workers=0, index="ivf"))
    info = c.manifest["index"]
    assert info["tuning"]["param"] == "nprobe"
    assert info["search_params"]["nprobe"] == info["tuning"]["tried"][-1][0]


def test_ivf_filtered_search_without_the_vector_table(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 300, sizes=[(40, 32), (64, 48), (33, 33)])
    Collection.index(root, model=TINY, options=IngestOptions(workers=0, index="ivf"))
    c = Collection.open(root)
    assert c.manifest["index"]["factory"].startswith("IVF")
    q = c.encoder.encode_texts(["a green square"])[0]
    hits = c.search_vector(q, k=5, where="width = 33")
    assert c._vectors is None  # IVF lists scanned with the selector; no vector table read
    allowed = c.filter_ids("width = 33")
    ids, vecs = c.vectors.ids, c.vectors.vectors.astype(np.float32)
    keep = np.isin(ids, allowed)
    ref = ids[keep][np.argsort(-(vecs[keep] @ q), kind="stable")[:5]]
    assert [h.id for h in hits] == ref.tolist()
