"""GPU code paths: skipped cleanly without a FAISS GPU build; the GPU benchmark script's
CPU fallback runs anywhere (issue 6, target 7)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmsearch.storage.ann import faiss_store as fs
from vlmsearch.storage.ann.gpu import gpu_available
from vlmsearch.storage.ann.plan import plan_index

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _data(n: int = 3000, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.arange(n, dtype=np.int64) * 3


@pytest.mark.skipif(not gpu_available(), reason="no FAISS GPU build or no GPU")
def test_gpu_search_matches_cpu(monkeypatch):
    x, ids = _data()
    plan = plan_index("flat", len(x), x.shape[1])
    index = fs.build_index(plan, x.shape[1], ids, x)
    _, gpu_ids = fs.search(index, x[:20], 10)  # through the GPU copy (float16)
    monkeypatch.setenv("VLMSEARCH_NO_GPU", "1")
    _, cpu_ids = fs.search(index, x[:20], 10)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(gpu_ids, cpu_ids, strict=True)]) >= 9.5


def test_gpu_bench_script_runs_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_search_gpu", None)
    import bench_search_gpu

    out = tmp_path / "gpu.json"
    argv = ["--cpu", "--n", "3000", "--dim", "32", "--queries", "100", "--max-batch", "16"]
    assert bench_search_gpu.main([*argv, "--nlist", "32", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["machine"]["backend"] == "cpu" and "CPU fallback" in res["note"]
    assert [r["batch"] for r in res["exact"]] == [1, 4, 16]
    assert res["ivf"]["sweep"] and res["graph"]["sweep"]
