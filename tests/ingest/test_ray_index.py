"""``vlmsearch index --ray``: the same collection as one process, every image exactly once
when a worker node is lost or the driver is killed, and a clear error without Ray.

One local ``ray.cluster_utils.Cluster`` (a head and two worker nodes, one CPU each) serves
the module; it takes about 15 s to start on a 2-core machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.ingest.ray_encode import STAGING

NODE = {"num_cpus": 1, "object_store_memory": 90 * 2**20}


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args=dict(NODE))
    workers = [c.add_node(**NODE) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


def _index(root: Path, coll: Path, ray: str | None = None, progress=None, **kw) -> Collection:
    opts = IngestOptions(**{"batch_size": 8, "workers": 0, "commit_every": 32, "ray": ray, **kw})
    return Collection.index(
        root, coll, model=TINY, options=opts, device="cpu", progress=progress, text_onnx=False
    )


def _exactly_once(coll: Collection, n: int) -> list[str]:
    """Every image once (ids and paths unique), each with one vector; returns the paths."""
    t = coll.table
    ids, paths = t["id"].to_pylist(), t["path"].to_pylist()
    assert len(ids) == len(set(ids)) == len(set(paths)) == n
    assert set(t["status"].to_pylist()) == {"ok"}
    assert sorted(coll.vectors.ids.tolist()) == sorted(ids)
    assert not (coll.path / STAGING).exists()
    return sorted(paths)


def _assert_same_vectors(local: Collection, dist: Collection) -> None:
    """The same ids for the same paths, and the same embeddings (cosine >= 0.9999)."""
    by_path = _ids_by_path(local)
    assert _ids_by_path(dist) == by_path
    ids = np.array(sorted(by_path.values()))
    a, b = local.vectors.get(ids), dist.vectors.get(ids)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999


def test_ray_index_matches_one_process(cluster, tmp_path):
    root = tmp_path / "photos"
    make_images(root, 160)
    seen: list[tuple[str, int, int]] = []
    local = _index(root, tmp_path / "local")
    dist = _index(root, tmp_path / "ray", ray="auto", progress=lambda *a: seen.append(a))
    assert _exactly_once(dist, 160) == _exactly_once(local, 160)
    rep = dist.last_report
    assert rep.new == rep.encoded == 160 and sum(rep.workers.values()) == 160
    assert sum(n for stage, n, _ in seen if stage == "encode") == 160
    executor = dist.manifest["ingest"]["executor"]
    assert executor["kind"] == "ray" and executor["nodes"] == 3 and executor["actors"] >= 1
    _assert_same_vectors(local, dist)
    for query in ("a red square", "a blue photo"):
        want = [(h.relpath, round(h.score, 3)) for h in local.search(query, k=10)]
        assert [(h.relpath, round(h.score, 3)) for h in dist.search(query, k=10)] == want
    # nothing new: nothing encoded, Ray not needed for the diff
    again = _index(root, tmp_path / "ray", ray="auto")
    assert again.last_report.encoded == 0 and again.last_report.unchanged == 160


def _ids_by_path(coll: Collection) -> dict[str, int]:
    t = coll.table
    return dict(zip(t["path"].to_pylist(), t["id"].to_pylist(), strict=True))


def test_worker_node_lost_mid_job(cluster, tmp_path):
    c, workers = cluster
    root = tmp_path / "photos"
    make_images(root, 200)
    removed = threading.Event()

    def remove() -> None:
        c.remove_node(workers[0], allow_graceful=False)  # its actor and objects go too
        removed.set()

    def progress(stage: str, _n: int, _total: int) -> None:
        if stage == "encode" and not removed.is_set() and not hasattr(progress, "t"):
            progress.t = threading.Thread(target=remove)  # type: ignore[attr-defined]
            progress.t.start()  # type: ignore[attr-defined]

    try:
        try:
            coll = _index(root, tmp_path / "c", ray="auto", progress=progress, batch_size=4)
        except Exception:  # the job may fail; a re-run resumes from its commits
            coll = _index(root, tmp_path / "c", ray="auto")
        assert removed.wait(60)
        _exactly_once(coll, 200)
        again = _index(root, tmp_path / "c", ray="auto")
        assert again.last_report.encoded == 0
    finally:
        if removed.wait(60):
            workers[0] = c.add_node(**NODE)
            c.wait_for_nodes()


def test_driver_killed_resumes_without_reencoding(cluster, tmp_path):
    c, _ = cluster
    root = tmp_path / "photos"
    make_images(root, 300)
    coll_dir = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [sys.executable, "-m", "vlmsearch", "index", str(root), "--collection",
            str(coll_dir), "--model", TINY, "--ray", c.address, "--workers", "0",
            "--batch-size", "4", "--commit-every", "8", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(args, env=env)
    try:
        deadline = time.monotonic() + 240
        while _committed(coll_dir) == 0 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its first commit was seen"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = _committed(coll_dir)
    assert 0 < partial < 300, partial
    coll = _index(root, coll_dir, ray=c.address)
    rep = coll.last_report
    assert rep.unchanged == partial and rep.encoded == rep.new == 300 - partial
    _exactly_once(coll, 300)


def _committed(coll_dir: Path) -> int:
    try:
        m = json.loads((coll_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    return int((m.get("counts") or {}).get("files", 0))


def test_without_ray_one_line_error_before_any_model(image_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError

    def no_model(*_a, **_k):
        raise AssertionError("a model was built before the --ray check")

    monkeypatch.setattr("vlmsearch.ingest.indexing.choose_encoder", no_model)
    res = CliRunner().invoke(app, ["index", str(image_dir), "--model", TINY, "--ray", "auto"])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'vlmsearch[ray]'" in lines[0], res.output
    assert not (image_dir / ".vlmsearch").exists()


def test_ray_indexes_shards_and_parquet(cluster, tmp_path, monkeypatch):
    """webdataset tars and Parquet files on the cluster: every item once, the same vectors
    as one process, and the on-disk index's per-block adds run as Ray tasks."""
    from tests.ingest import datasets as D

    data = tmp_path / "data"
    D.webdataset_shard(data / "00000.tar", 0, 24, tmp_path)
    D.webdataset_shard(data / "00001.tar", 24, 24, tmp_path)
    D.parquet_dataset(data / "hf.parquet", 48, 16, tmp_path, "struct")
    seen: list[tuple[str, int, int]] = []
    local = _index(data, tmp_path / "local", index="ondisk")
    from vlmsearch.ingest import finish, ray_index

    blocks_on_ray: list[int] = []

    def adder(address):
        run = ray_index.ray_block_adder(address)

        def counted(trained, ids, vectors, blocks, progress):
            blocks_on_ray.append(len(blocks))
            return run(trained, ids, vectors, blocks, progress)

        return counted

    monkeypatch.setattr(finish, "ray_block_adder", adder)
    dist = _index(
        data, tmp_path / "ray", ray="auto", index="ondisk", progress=lambda *a: seen.append(a)
    )
    assert _exactly_once(dist, 64) == _exactly_once(local, 64)
    assert blocks_on_ray == [1]  # the on-disk index's block was added by a Ray task
    assert sum(n for stage, n, _ in seen if stage == "index") == 64
    assert dist.manifest["index"]["ondisk"] and local.manifest["index"]["ondisk"]
    _assert_same_vectors(local, dist)
    rows = {r["path"]: r for r in dist.table.to_pylist()}
    assert rows["00001.tar/000000025.png"]["caption"] == "a green square"
    assert rows["hf.parquet/3"]["text"] == D.CAPTIONS[D.colour(51)]
    want = [h.relpath for h in local.search("a red square", k=5)]
    assert [h.relpath for h in dist.search("a red square", k=5)] == want
    # path strings named by --image-column: the workers are told the column and base
    other = tmp_path / "paths"
    D.parquet_dataset(other / "p.parquet", 0, 12, tmp_path, "path")
    col = _index(
        other, tmp_path / "ray-paths", ray="auto", image_column="file", image_base=str(tmp_path)
    )
    assert _exactly_once(col, 12)[0].startswith("p.parquet/")
