"""Exact search with torch (issue 21, target 3): the chunked scan and mask checked on the
CPU against faiss's exact search; the dispatch never takes it, nor imports torch, on a
machine without a GPU; the CUDA checks skip cleanly without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmsearch.storage.ann import faiss_store as fs
from vlmsearch.storage.ann import torch_exact as te
from vlmsearch.storage.ann.plan import plan_index

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()


def _data(n: int = 2000, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _index(x: np.ndarray, kind: str = "flat", spacing: int = 3):
    ids = np.arange(len(x), dtype=np.int64) * spacing + 7  # ids are not row numbers
    return fs.build_index(plan_index(kind, len(x), x.shape[1]), x.shape[1], ids, x), ids


def _faiss_exact(index, q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    sel = None if allowed is None else fs.id_selector(allowed)[0]
    sp = fs.search_params_for(fs.base_of(index), {}, sel, k)
    return index.search(q, k, params=sp)


@pytest.mark.parametrize("chunk", [None, 7, 300])
def test_scan_topk_matches_numpy(chunk):
    x, q = _data(), _data(20, seed=1)
    xb, qt = torch.from_numpy(x), torch.from_numpy(q)
    mask = torch.from_numpy(np.random.default_rng(2).random(len(x)) < 0.3)
    for m in (None, mask):
        scores, rows = te.scan_topk(xb, qt, 10, m, chunk_rows=chunk)
        full = q @ x.T
        if m is not None:
            full[:, ~m.numpy()] = -np.inf
        truth = np.argsort(-full, axis=1)[:, :10]
        assert np.array_equal(rows.numpy(), truth)
        assert np.allclose(scores.numpy(), np.take_along_axis(full, truth, 1), atol=1e-6)


@pytest.mark.parametrize("nq", [1, 50])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_searcher_on_cpu_equals_faiss_exact(nq, dtype, monkeypatch):
    monkeypatch.setattr(te, "SCORE_BUDGET_BYTES", 4096)  # many chunks
    monkeypatch.setattr(te, "RESCORE_BYTES", 1)  # one query per rescoring step
    x = _data()
    index, ids = _index(x)
    q = _data(nq, seed=5)
    s = te.TorchExactSearcher(index, device="cpu", dtype=getattr(torch, dtype))
    rng = np.random.default_rng(3)
    allowed = np.sort(rng.choice(ids, 150, replace=False))
    for allow in (None, allowed):
        got_s, got_i = s.search(q, 10, allow)
        ref_s, ref_i = _faiss_exact(index, q, 10, allow)
        assert np.array_equal(got_i, ref_i)  # recall 1.0, same order
        assert np.allclose(got_s, ref_s, atol=1e-5)
        if allow is not None:
            assert np.isin(got_i, allowed).all()


def test_k_beyond_allowed_rows_pads_like_faiss():
    x = _data(500)
    q = _data(4, seed=9)
    for kind_ids in ("idmap", "plain"):
        if kind_ids == "idmap":
            index, ids = _index(x)
        else:
            import faiss

            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            ids = np.arange(len(x))
        allowed = ids[[3, 40, 41, 499]]
        s = te.TorchExactSearcher(index, device="cpu", dtype=torch.float32)
        got_s, got_i = s.search(q, 10, allowed)
        ref_s, ref_i = _faiss_exact(index, q, 10, allowed)
        assert np.array_equal(got_i, ref_i) and (got_i[:, 4:] == -1).all()
        assert np.array_equal(got_s[:, 4:], ref_s[:, 4:])  # faiss's -FLT_MAX
        assert np.allclose(got_s[:, :4], ref_s[:, :4], atol=1e-5)
        _, none_i = s.search(q, 3, np.array([], np.int64))
        assert (none_i == -1).all()
        big_s, big_i = s.search(q, len(x) + 5, None)  # k > ntotal
        assert (big_i[:, len(x) :] == -1).all() and set(big_i[0, : len(x)]) == set(ids)


def test_dispatch_predicate_and_no_torch_path_without_gpu(monkeypatch):
    x = _data(300)
    index, _ = _index(x)
    monkeypatch.setattr(te, "MIN_ROWS", 0)
    if not CUDA:
        assert te.wanted(index) is False
    calls = []
    monkeypatch.setattr(te, "TorchExactSearcher", lambda *a, **kw: calls.append(a))
    monkeypatch.setenv("VLMSEARCH_NO_GPU", "1")
    fs.search(index, x[:3], 5)
    fs.search(index, x[:3], 5, allowed_ids=np.array([7, 10]))
    assert calls == []
    monkeypatch.delenv("VLMSEARCH_NO_GPU")
    if not CUDA:
        fs.search(index, x[:3], 5)
        fs.search(index, x[:3], 5, allowed_ids=np.array([7, 10]))
        assert calls == []


def test_predicate_rules(monkeypatch):
    """With torch's CUDA faked on: flat indexes of MIN_ROWS rows and more only, never
    under VLMSEARCH_NO_GPU nor when faiss has its own GPU."""
    x = _data(1200, d=8)
    monkeypatch.setattr(te, "cuda_available", lambda: True)
    monkeypatch.setattr(te.gpu, "gpu_available", lambda: False)
    monkeypatch.setattr(te, "MIN_ROWS", 1000)
    flat, _ = _index(x)
    assert te.wanted(flat)
    assert not te.wanted(_index(x[:999])[0])
    assert not te.wanted(_index(x, "hnsw")[0])
    assert not te.wanted(_index(x, "IVF16,Flat")[0])
    monkeypatch.setenv("VLMSEARCH_NO_GPU", "1")
    assert not te.wanted(flat)
    monkeypatch.delenv("VLMSEARCH_NO_GPU")
    monkeypatch.setattr(te.gpu, "gpu_available", lambda: True)
    assert not te.wanted(flat)


def test_dispatch_runs_searcher_and_forgets_on_update(monkeypatch):
    """The whole path through ``faiss_store.search`` with the device pointed at the CPU."""
    x = _data(1500)
    index, ids = _index(x)
    q = _data(8, seed=4)
    monkeypatch.setattr(te, "cuda_available", lambda: True)
    monkeypatch.setattr(te.gpu, "gpu_available", lambda: False)
    monkeypatch.setattr(te, "MIN_ROWS", 1000)
    monkeypatch.setattr(te, "DEVICE", "cpu")
    allowed = ids[::5]
    for allow in (None, allowed):
        got = fs.search(index, q, 10, allowed_ids=allow)
        assert np.array_equal(got[1], _faiss_exact(index, q, 10, allow)[1])
    first = te.searcher_for(index)
    assert first is not None and te.searcher_for(index) is first  # cached
    fs.remove_ids(index, ids[:10])
    fs.add_vectors(index, ids[:10], -x[:10])  # same ntotal, new vectors
    assert te.searcher_for(index) is not first
    got = fs.search(index, x[:5], 3)
    assert np.array_equal(got[1], _faiss_exact(index, x[:5], 3)[1])


def test_vectors_beyond_float16_stay_on_cpu(monkeypatch):
    x = _data(1500) * 1e5  # not normalised: overflows float16
    index, _ = _index(x)
    monkeypatch.setattr(te, "cuda_available", lambda: True)
    monkeypatch.setattr(te.gpu, "gpu_available", lambda: False)
    monkeypatch.setattr(te, "MIN_ROWS", 1000)
    monkeypatch.setattr(te, "DEVICE", "cpu")
    assert te.wanted(index) and te.searcher_for(index) is None
    got = fs.search(index, x[:4], 5)
    assert np.array_equal(got[1], _faiss_exact(index, x[:4], 5)[1])


@pytest.mark.skipif(te.gpu_hint(), reason="this machine shows an NVIDIA device")
def test_search_without_gpu_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from vlmsearch.storage.ann import faiss_store as fs, torch_exact as te\n"
        "from vlmsearch.storage.ann.plan import plan_index\n"
        "te.MIN_ROWS = 0\n"
        "x = np.random.default_rng(0).standard_normal((500, 8)).astype('float32')\n"
        "ix = fs.build_index(plan_index('flat', 500, 8), 8, np.arange(500), x)\n"
        "fs.search(ix, x[:2], 5); fs.search(ix, x[:2], 5, allowed_ids=np.arange(9))\n"
        "print(te.wanted(ix), 'torch' in sys.modules)\n"
    )
    for cvd in (None, "-1"):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if cvd is not None:
            env["CUDA_VISIBLE_DEVICES"] = cvd
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device")
def test_cuda_fp16_equals_faiss_exact_with_masks():
    x = _data(200_000, d=64)
    index, ids = _index(x)
    q = _data(64, d=64, seed=8)
    s = te.TorchExactSearcher(index, device="cuda")
    assert s.xb.dtype == torch.float16 and s.xb.is_cuda
    allowed = np.sort(np.random.default_rng(1).choice(ids, 20_000, replace=False))
    for allow in (None, allowed, allowed[:5]):
        got_s, got_i = s.search(q, 10, allow)
        ref_s, ref_i = _faiss_exact(index, q, 10, allow)
        assert np.array_equal(got_i == -1, ref_i == -1)
        for g, r in zip(got_i, ref_i, strict=True):
            assert set(g) == set(r)  # recall 1.0 (and the same -1 padding)
        found = ref_i != -1
        assert np.allclose(np.sort(got_s, 1), np.sort(ref_s, 1), atol=1e-5)  # float32 rescoring
        assert (got_s[~found] == ref_s[~found]).all()


def test_torch_bench_script_runs_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("bench_search_torch_gpu", None)
    import bench_search_torch_gpu as bench

    out = tmp_path / "torch.json"
    argv = ["--cpu", "--dtype", "float16", "--n", "3000", "--dim", "32", "--batches", "1,16"]
    assert bench.main([*argv, "--reps", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["batch"], r["masked"]) for r in res["scan"]] == [
        (1, False),
        (1, True),
        (16, False),
        (16, True),
    ]
    assert res["recall"]["unmasked"]["recall_rescored"] == 1.0
    assert res["recall"]["masked"]["recall_rescored"] == 1.0
