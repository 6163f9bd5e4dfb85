"""On-disk IVF indexes: built shard by shard and merged, they answer exactly as the
in-memory index over the same vectors does."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from vlmsearch.errors import QueryError
from vlmsearch.storage.ann import faiss_store, ondisk
from vlmsearch.storage.ann.plan import check_index_request, plan_index


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,SQ8", "IVF32,PQ8x4", "OPQ8,IVF32,PQ8x4"])
def test_on_disk_equals_in_memory(tmp_path, factory):
    d, n = 32, 12_000
    x = _unit(n, d, 0).astype(np.float16)  # stored vectors are float16
    ids = np.arange(n, dtype=np.int64) * 3 + 7  # ids are labels, not row numbers
    # OPQ trains its rotation with 256-centroid PQs whatever the codes: a small sample
    # keeps the test fast (FAISS warns about it; the equality is what is tested)
    n_train = 2000 if factory.startswith("OPQ") else ondisk.training_size(factory, n, 32)
    trained = ondisk.train_index(factory, d, x[:n_train])
    ondisk.write_trained(trained, tmp_path / "trained.faiss")
    trained = ondisk.read_trained(tmp_path / "trained.faiss")

    memory = faiss.clone_index(trained)
    memory.add_with_ids(x.astype(np.float32), ids)

    shards = []
    for j, (lo, hi) in enumerate([(0, 5000), (5000, 5001), (5001, n)]):
        out = tmp_path / f"shard{j}.faiss"
        ondisk.add_shard(trained, ids[lo:hi], x[lo:hi], out)
        shards.append(out)
    merged = ondisk.merge_shards(trained, shards, tmp_path / "tmp-lists.bin")
    ondisk.write_header(merged, tmp_path / "index.faiss", "lists.ivfdata")
    del merged
    (tmp_path / "tmp-lists.bin").rename(tmp_path / "lists.ivfdata")

    opened = ondisk.open_index(tmp_path / "index.faiss")
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(opened).invlists)
    assert isinstance(invlists, faiss.OnDiskInvertedLists)
    assert opened.ntotal == n

    q = _unit(50, d, 1)
    params = {"nprobe": 8}
    d_mem, i_mem = faiss_store.search(memory, q, 10, params)
    d_disk, i_disk = faiss_store.search(opened, q, 10, params)
    np.testing.assert_array_equal(i_disk, i_mem)
    np.testing.assert_allclose(d_disk, d_mem, rtol=1e-6)

    # filtered: the same id selector on both
    allowed = ids[::5]
    np.testing.assert_array_equal(
        faiss_store.search(opened, q, 10, params, allowed)[1],
        faiss_store.search(memory, q, 10, params, allowed)[1],
    )


def test_parts_with_dead_ids_equal_one_index(tmp_path):
    """A base, a delta and dead ids answer as one in-memory index holding the live
    copies: a re-encoded id's old copy in the base is never returned."""
    d, n = 16, 6000
    x = _unit(n, d, 2)
    ids = np.arange(n, dtype=np.int64)
    trained = ondisk.train_index("IVF16,Flat", d, x)
    base = ondisk.add_shard(trained, ids[:5000], x[:5000])
    # ids 0..99 deleted, 100..199 re-encoded (new vectors in the delta), 5000.. added
    new_vec = _unit(100, d, 3)
    delta_ids = np.concatenate([ids[100:200], ids[5000:]])
    delta_x = np.concatenate([new_vec, x[5000:]])
    delta = ondisk.add_shard(trained, delta_ids, delta_x)
    layered = ondisk.OnDiskIndex([base, delta], [ids[:200], np.zeros(0, np.int64)])
    assert layered.ntotal == n - 100

    truth = faiss.clone_index(trained)
    live = np.concatenate([ids[200:5000], delta_ids])
    truth.add_with_ids(np.concatenate([x[200:5000], delta_x]), live)
    q = np.concatenate([_unit(20, d, 4), new_vec[:5], x[:5]])
    params = {"nprobe": 16}
    s1, i1 = faiss_store.search(layered, q, 10, params)
    s2, i2 = faiss_store.search(truth, q, 10, params)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    allowed = live[::3]
    np.testing.assert_array_equal(
        faiss_store.search(layered, q, 10, params, allowed)[1],
        faiss_store.search(truth, q, 10, params, allowed)[1],
    )


def test_not_ivf_is_refused():
    with pytest.raises(ValueError, match="IVF"):
        ondisk.train_index("Flat", 8, np.zeros((10, 8), np.float32))


def test_auto_rule_for_large_collections():
    # fp32 (2 GB) does not fit 256 MB; 1M x (512 + 8) bytes of SQ8 lists do not either,
    # 1M x (64 + 8) bytes of PQ64 lists do
    small_budget = plan_index("auto", 1_000_000, 512, memory_budget=1 << 28)
    assert small_budget.ondisk and small_budget.factory == "IVF1024,PQ64x8"
    assert not plan_index("auto", 1_000_000, 512, memory_budget=8 << 30).ondisk
    ten_m = plan_index("auto", 10_000_000, 512, memory_budget=8 << 30)
    # 10M x (512 + 8) bytes = 5.2 GB of lists fit 8 GB: SQ8
    assert ten_m.ondisk and ten_m.factory == "IVF4096,SQ8"
    assert ten_m.to_json()["storage"] == "ondisk"
    assert plan_index("auto", 10_000_000, 512, memory_budget=1 << 30).factory.endswith("PQ64x8")
    assert plan_index("auto", 10_000_000, 512, memory_budget=1 << 28).factory.endswith("PQ32x8")
    assert plan_index("ondisk:IVF64,Flat", 10_000, 32).factory == "IVF64,Flat"
    assert plan_index("ondisk", 20, 32).factory == "Flat"  # too few to train: exact
    with pytest.raises(QueryError, match="only IVF"):
        check_index_request("ondisk:HNSW32", 32, False)
    check_index_request("ondisk:IVF64,PQ8x8", 32, False)
    check_index_request("ondisk", 32, False)


def _one_shard_index(tmp_path, factory: str, nlist: int, ids: np.ndarray, x: np.ndarray):
    """An on-disk IVF index of ``x`` trained, added as one shard and merged."""
    n_train = ondisk.training_size(factory, len(x), nlist)
    trained = ondisk.train_index(factory, x.shape[1], x[:n_train])
    ondisk.add_shard(trained, ids, x, tmp_path / "s.faiss")
    return ondisk.merge_shards(trained, [tmp_path / "s.faiss"], tmp_path / "lists.ivfdata")


def test_tuned_nprobe_reaches_the_recall_bar_on_new_queries(tmp_path):
    """tune_on_stored picks nprobe with stored rows as queries (their own id left out):
    new queries from the same data then reach the recall bar, with fewer lists than all."""
    from benchmarks.synthetic_collection import subspace_mixture
    from vlmsearch.storage.ann.plan import IndexPlan
    from vlmsearch.storage.ann.tune import TUNE_TARGET_RECALL, tune_on_stored

    d, n, nlist = 32, 8_000, 64
    x = subspace_mixture(n + 200, d, 4, 1.0, 8, np.random.default_rng(0))
    base, fresh = x[:n].astype(np.float16), x[n:]
    ids = np.arange(n, dtype=np.int64) + 100
    factory = f"IVF{nlist},Flat"
    merged = _one_shard_index(tmp_path, factory, nlist, ids, base)
    plan = IndexPlan("ondisk", factory, {"nprobe": nlist}, "test", True)
    params, report = tune_on_stored(plan, merged, ids, base)
    assert report["tried"][-1][1] >= TUNE_TARGET_RECALL
    assert params["nprobe"] == report["tried"][-1][0] < nlist
    _, got = faiss_store.search(merged, fresh, 10, params)
    exact = np.argsort(-(fresh @ base.astype(np.float32).T), axis=1)[:, :10] + 100
    recall = np.mean([len(np.intersect1d(g, e)) for g, e in zip(got, exact, strict=True)]) / 10
    assert recall >= TUNE_TARGET_RECALL - 0.03, (recall, report)


def test_tuning_stops_where_compressed_codes_cap_recall(tmp_path):
    """Codes too coarse to reach the bar: tuning keeps the nprobe where recall stopped
    rising instead of probing every list."""
    from benchmarks.synthetic_collection import subspace_mixture
    from vlmsearch.storage.ann.plan import IndexPlan
    from vlmsearch.storage.ann.tune import PLATEAU_GAIN, TUNE_TARGET_RECALL, tune_on_stored

    d, n, nlist = 32, 8_000, 256
    x = subspace_mixture(n, d, 4, 1.0, 8, np.random.default_rng(0)).astype(np.float16)
    ids = np.arange(n, dtype=np.int64)
    factory = f"IVF{nlist},PQ2x4"  # 1 byte a vector: recall far below the bar
    merged = _one_shard_index(tmp_path, factory, nlist, ids, x)
    plan = IndexPlan("ondisk", factory, {"nprobe": 16}, "test", True)
    params, report = tune_on_stored(plan, merged, ids, x)
    recalls = dict(report["tried"])
    assert max(recalls.values()) < TUNE_TARGET_RECALL and report["stopped"] == "plateau"
    assert params["nprobe"] < nlist and params["nprobe"] == report["tried"][-3][0]
    assert report["tried"][-1][1] - recalls[params["nprobe"]] < PLATEAU_GAIN
