"""Issue 14 items 9 and 11: checksums of committed files, damaged files as one-line errors
naming the file and the way out, `vlmsearch check [--repair]`, `index --rebuild` from a
damaged manifest, and `serve` starting beside a damaged collection."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, make_images, metadata_file
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.ingest import repair
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage import integrity, segments
from vlmsearch.storage.layout import Layout

OPTS = dict(workers=0, batch_size=4, commit_every=4)  # 12 images -> 3 vector shards


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_encoder) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "photos"
    make_images(root, 12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(root.parent / "state"))
        Collection.index(root, encoder=tiny_encoder, options=IngestOptions(**OPTS))
    return root


@pytest.fixture
def photos(pristine, tmp_path) -> Path:
    """A private copy of the indexed folder (the collection inside it)."""
    return shutil.copytree(pristine, tmp_path / "photos")


def coll_dir(root: Path) -> Path:
    return root / ".vlmsearch"


def manifest(root: Path) -> dict:
    return json.loads((coll_dir(root) / "manifest.json").read_text())


def target(root: Path, kind: str) -> str:
    """The name (relative to the collection) of one committed file of ``kind``."""
    m = manifest(root)
    return {
        "metadata": metadata_file(m),
        "vectors": f"vectors/{m['shards'][1]}.f16.npy",
        "ids": f"vectors/{m['shards'][1]}.ids.npy",
        "index": m["index"]["file"],
    }[kind]


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # one flipped bit in the last quarter (the data, past any header)
        data[len(data) * 3 // 4] ^= 0x04
    path.write_bytes(bytes(data))


def query(root: Path) -> np.ndarray:
    rng = np.random.default_rng(7)
    q = rng.standard_normal(Collection.open(coll_dir(root)).dim).astype(np.float32)
    return q / np.linalg.norm(q)


def results(root: Path, q: np.ndarray, where: str | None = None) -> list[tuple[str, float]]:
    coll = Collection.open(coll_dir(root))
    return [(h.relpath, round(h.score, 4)) for h in coll.search_vector(q, k=12, where=where)]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["vlmsearch", *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


# -- item 9: checksums -----------------------------------------------------------------------------
def test_manifest_records_size_and_sha256_of_every_committed_file(photos):
    m = manifest(photos)
    named = integrity.committed_files(m)
    meta = len(segments.metadata_files(m))  # format 2: one segment per checkpoint (3)
    assert len(named) == meta + 2 * 3 + 1  # metadata, three shards, the index
    assert sorted(m["checksums"]) == sorted(named)
    for name in named:
        data = (coll_dir(photos) / name).read_bytes()
        assert m["checksums"][name] == {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }


def test_flipped_bit_in_a_vector_shard_is_an_error_not_a_wrong_score(photos):
    q = query(photos)
    assert max(s for _, s in results(photos, q, where="width > 0")) <= 1.0001
    name = target(photos, "vectors")
    damage(coll_dir(photos) / name, "flip")
    with pytest.raises(CollectionError) as e:
        results(photos, q, where="width > 0")  # the exact path reads the vectors
    assert name in str(e.value) and "bit rot" in str(e.value)


@pytest.mark.parametrize("kind", ["metadata", "vectors", "ids", "index"])
@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_damaged_file_raises_collection_error_naming_it(photos, kind, how):
    name = target(photos, kind)
    damage(coll_dir(photos) / name, how)
    if (kind, how) == ("index", "delete"):  # derived data: exact search from the vectors
        coll = Collection.open(coll_dir(photos))
        assert coll.faiss_index.ntotal == 12 and coll.index_is_stale
        return
    with pytest.raises(CollectionError) as e:
        coll = Collection.open(coll_dir(photos))
        coll.vectors  # noqa: B018
        coll.faiss_index  # noqa: B018
    assert isinstance(e.value, integrity.DamagedFileError)
    assert name in str(e.value) and "vlmsearch check --repair" in str(e.value)


def test_file_is_hashed_once_per_process(photos, monkeypatch):
    calls: list[Path] = []
    real = integrity.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        coll = Collection.open(coll_dir(photos))
        coll.vectors  # noqa: B018
        coll.faiss_index  # noqa: B018
    meta = len(segments.metadata_files(manifest(photos)))  # 1 in format 1, 3 in format 2
    assert len(calls) == len(set(calls)) == 7 + meta
    # a file replaced under the same name (new inode and mtime) is hashed again
    name = target(photos, "index")
    path = coll_dir(photos) / name
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    Collection.open(coll_dir(photos)).faiss_index  # noqa: B018
    assert calls[-1] == path and len(calls) == 8 + meta


def test_collection_without_checksums_still_opens_and_damage_is_still_named(photos):
    path = coll_dir(photos) / "manifest.json"
    m = manifest(photos)
    del m["checksums"]  # as written before checksums existed
    path.write_text(json.dumps(m))
    q = query(photos)
    assert len(results(photos, q)) == 12
    name = target(photos, "index")
    damage(coll_dir(photos) / name, "truncate")  # FAISS reads it: an error, not an abort
    with pytest.raises(integrity.DamagedFileError, match=name):
        Collection.open(coll_dir(photos)).faiss_index  # noqa: B018


def test_metadata_parquet_has_page_checksums(photos):
    """Without the manifest's digest, page checksums still catch flips in the data pages:
    every single-byte flip either fails to read or reads back the same table."""
    import pyarrow.parquet as pq

    from vlmsearch.storage import metadata

    path = coll_dir(photos) / target(photos, "metadata")
    original = metadata.read_table(path)
    data = path.read_bytes()
    pf = pq.ParquetFile(path)
    col = pf.metadata.row_group(0).column(1)  # the 'path' column
    start = col.data_page_offset
    changed = 0
    for off in range(start + 16, start + col.total_compressed_size):
        bad = bytearray(data)
        bad[off] ^= 0x01
        path.write_bytes(bytes(bad))
        try:
            table = metadata.read_table(path)
        except Exception:  # noqa: BLE001 - any refusal is fine; silence is not
            continue
        changed += not table.equals(original)
    assert changed == 0


# -- item 11: one-line errors from the CLI ------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "how", "args"),
    [
        ("metadata", "truncate", []),
        ("vectors", "flip", ["--where", "width > 0"]),
        ("index", "truncate", []),
    ],
)
def test_cli_damaged_file_is_one_line_naming_file_and_way_out(photos, kind, how, args):
    name = target(photos, kind)
    damage(coll_dir(photos) / name, how)
    proc = run_cli("search", "red", "-c", str(coll_dir(photos)), *args)
    assert_one_line_error(proc, name, "vlmsearch check --repair")


@pytest.mark.parametrize("how", ["truncate", "missing-key", "not-object"])
def test_cli_damaged_manifest_is_one_line_with_the_way_out(photos, how):
    path = coll_dir(photos) / "manifest.json"
    text = path.read_text()
    if how == "truncate":
        path.write_text(text[: len(text) // 2])
    elif how == "missing-key":
        m = json.loads(text)
        del m["encoder"]
        path.write_text(json.dumps(m))
    else:
        path.write_text("[1, 2]")
    proc = run_cli("search", "red", "-c", str(coll_dir(photos)))
    assert_one_line_error(proc, "manifest.json", "--rebuild")


def test_rebuild_starts_over_from_a_truncated_manifest_keeping_foreign_files(photos):
    path = coll_dir(photos) / "manifest.json"
    path.write_text(path.read_text()[:100])
    (coll_dir(photos) / "notes.txt").write_text("mine")
    proc = run_cli("index", str(photos), "--model", TINY, "--rebuild", "--workers", "0", "-q")
    assert proc.returncode == 0, proc.stderr
    coll = Collection.open(coll_dir(photos))
    assert len(coll) == 12 and coll.faiss_index.ntotal == 12
    assert (coll_dir(photos) / "notes.txt").read_text() == "mine"
    assert repair.check(coll.layout).healthy


# -- item 11: check and repair ---------------------------------------------------------------------
def test_check_reports_damage_and_repair_rebuilds_the_index(photos):
    q = query(photos)
    before = results(photos, q)
    name = target(photos, "index")
    damage(coll_dir(photos) / name, "flip")
    proc = run_cli("check", "-c", str(coll_dir(photos)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"damaged    faiss index     {name}" in proc.stdout
    proc = run_cli("check", "--repair", "--json", "-c", str(coll_dir(photos)))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] and report["reencode"] == []
    assert any("index rebuilt" in line for line in report["repaired"])
    assert results(photos, q) == before


def test_repair_of_a_shard_drops_only_its_rows_and_index_reencodes_only_them(photos, tiny_encoder):
    q = query(photos)
    before = results(photos, q)
    lost_ids = np.load(coll_dir(photos) / target(photos, "ids"))
    damage(coll_dir(photos) / target(photos, "vectors"), "flip")
    report = repair.repair(Layout(coll_dir(photos)))
    assert report.healthy
    assert len(report.reencode) == len(lost_ids) == 4
    assert len(results(photos, q)) == 8  # searchable at once, without the lost rows
    coll = Collection.index(photos, encoder=tiny_encoder, options=IngestOptions(**OPTS))
    assert coll.last_report.encoded == 4 and coll.last_report.unchanged == 8
    assert sorted(results(photos, q)) == sorted(before)


def test_index_repair_restores_metadata_from_the_previous_generation(photos, tiny_encoder):
    q = query(photos)
    before = results(photos, q)
    coll = Collection.open(coll_dir(photos))
    coll.use_encoder(tiny_encoder)
    coll.classify(["red", "blue"], write_column="label")  # a commit that keeps its previous
    name = target(photos, "metadata")
    damage(coll_dir(photos) / name, "truncate")
    proc = run_cli("index", str(photos), "--workers", "0")
    assert_one_line_error(proc, name, "--repair")
    proc = run_cli("index", str(photos), "--repair", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    if name.startswith("metadata-"):  # format 1: the previous table is restored
        assert "metadata restored from metadata-" in proc.stderr
        assert "0 encoded" in proc.stderr  # nothing re-encoded: the vectors were intact
    else:  # format 2: segments are never rewritten, so no older copy exists; the damaged
        # segment's rows are dropped and only their files are encoded again
        assert f"metadata file {name} dropped (damaged)" in proc.stderr
        assert " 0 encoded" not in proc.stderr
    assert results(photos, q) == before
    assert repair.check(Layout(coll_dir(photos))).healthy


# -- item 11: the server -----------------------------------------------------------------------
def test_server_starts_with_a_damaged_collection_and_reports_it(photos, pristine, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    good = shutil.copytree(pristine, tmp_path / "good")
    name = target(photos, "index")
    damage(coll_dir(photos) / name, "truncate")
    config = ServerConfig(collections={"bad": coll_dir(photos), "good": coll_dir(good)})
    client = TestClient(
        create_app(config), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    health = client.get("/api/health").json()
    assert health["collections"]["good"]["available"] is True
    bad = health["collections"]["bad"]
    assert bad["available"] is False and Path(name).name in bad["error"]
    res = client.post("/api/collections/bad/search", json={"text": "red"})
    assert res.status_code == 503 and Path(name).name in res.json()["error"]
    assert client.post("/api/collections/good/search", json={"text": "red"}).status_code == 200
    repair.repair(Layout(coll_dir(photos)))  # a repaired collection becomes available
    assert client.post("/api/collections/bad/search", json={"text": "red"}).status_code == 200
