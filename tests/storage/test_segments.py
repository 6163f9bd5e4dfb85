"""Format 2: checkpoints append segments (their cost follows the batch), tombstoned ids
never come back, format 1 migrates in place, newer formats are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.synthetic_collection import write_collection
from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage import metadata, segments
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.maintenance import compact_collection
from vlmsearch.storage.store import CollectionWriter


def _files(path: Path) -> dict[str, int]:
    return {
        str(p.relative_to(path)): p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def checkpoint_bytes(path: Path, batch: int = 1024, dim: int = 8) -> int:
    """Bytes written by one checkpoint of ``batch`` images (half of them re-encoded
    files, half new), as ``index`` commits it: new files plus the manifest."""
    layout = Layout(path)
    with layout.lock():
        manifest = layout.read_manifest()
        writer = CollectionWriter(layout, manifest)
        writer.previous = manifest
        start = int(manifest["next_id"])
        ids = np.concatenate([np.arange(batch // 2), start + np.arange(batch - batch // 2)])
        base = {c: None for c in metadata.BASE_COLUMNS}
        rows = [
            {**base, "id": int(i), "path": f"new/{i}.jpg", "size": 1, "mtime_ns": 1, "status": "ok"}
            for i in ids
        ]
        writer.upsert(rows)
        writer.manifest["next_id"] = start + batch
        before = _files(path)
        vecs = np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float16)
        writer.commit(shard=(ids.astype(np.int64), vecs))
    after = _files(path)
    new = [n for n in after if n not in before or n == "manifest.json"]
    return sum(after[n] for n in new)


@pytest.mark.parametrize("batch", [1024])
def test_checkpoint_bytes_do_not_grow_with_the_collection(tmp_path: Path, batch: int):
    written = {}
    for n in (2_000, 200_000):
        path = tmp_path / f"c{n}"
        vecs = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float16)
        write_collection(path, vecs, shard_rows=n)
        written[n] = checkpoint_bytes(path, batch)
        coll = Collection.open(path)
        assert len(coll.table) == n + batch - batch // 2  # half replaced, half new
        assert coll.manifest["counts"]["files"] == n + batch - batch // 2
    # 100x the rows, the same checkpoint: the same bytes (a few manifest digits aside)
    assert written[200_000] <= written[2_000] * 1.05 + 512, written


def _index(root: Path, **opts) -> Collection:
    return Collection.index(
        root, model=TINY, options=IngestOptions(batch_size=4, workers=0, commit_every=4, **opts)
    )


@pytest.fixture(
    params=[("copy", "auto"), ("in_place", "auto"), ("in_place", "ondisk:IVF2,Flat")],
    ids=["copy", "in-place", "in-place-ondisk"],
)
def churned(request, image_dir: Path, monkeypatch) -> tuple[Collection, set[int]]:
    """A collection after deletes and re-encodes: returns it and the ids that died. Its
    metadata is read as a DuckDB copy or in place (as collections past
    ``COPY_MAX_ROWS`` are), its index in memory or on disk (dead ids in the parts)."""
    mode, index = request.param
    if mode == "in_place":
        monkeypatch.setattr(metadata, "COPY_MAX_ROWS", 0)
    if index.startswith("ondisk"):
        make_images(image_dir / "bulk", 80)  # IVF2 trains on 2 x 39 points at least
    coll = _index(image_dir, index=index)
    first = {r["path"]: r["id"] for r in coll.table.select(["path", "id"]).to_pylist()}
    # a caption for every image, so that text-column and fused searches see dead ids too
    coll._write_text_column("caption", {i: f"caption {i}" for i in first.values()}, {"lm": "t"})
    files = sorted(p for p in image_dir.rglob("*.png") if ".vlmsearch" not in p.parts)
    for p in files[:3]:
        p.unlink()
    make_images(image_dir / "more", 2)
    coll = _index(image_dir, index=index)
    now = {r["path"]: r["id"] for r in coll.table.select(["path", "id"]).to_pylist()}
    dead = {i for p, i in first.items() if p not in now}
    assert dead and coll.manifest["tombstones"]
    assert coll.reader.metadata_filter().in_place == (mode == "in_place")
    if index.startswith("ondisk"):  # the dead ids are filtered, not yet rebuilt away
        assert coll.manifest["index"].get("storage") == "ondisk", coll.manifest["index"]
        assert coll.manifest["index"]["ondisk"]["dead"]
    return coll, dead


def test_tombstoned_ids_never_come_back(churned):
    """ANN, filtered, similar, text-column, fused and exact searches, ids and rows."""
    coll, dead = churned
    live = set(coll.table["id"].to_pylist())
    assert not dead & live
    q = coll.vectors.vectors[0].astype(np.float32)
    k = 50
    seen = {h.id for h in coll.search_vector(q, k=k)}  # ANN (the stored index)
    seen |= {h.id for h in coll.search_vector(q, k=k, where="width > 0")}  # filtered
    seen |= {h.id for h in coll.similar(next(iter(live)), k=k)}
    seen |= set(coll.filter_ids(None).tolist()) | set(coll.rows(sorted(dead)))
    seen |= {h.id for h in coll.search("caption", text_column="caption", k=k)}  # text column
    seen |= {h.id for h in coll.search_fused(q, "caption", 0.5, k=k)}  # fused
    (coll.path / coll.manifest["index"]["file"]).unlink()  # exact: no index, the vectors
    exact = Collection.open(coll.path)
    seen |= {h.id for h in exact.search_vector(q, k=k)}
    assert exact.index_is_stale
    assert seen and not seen & dead


def test_tombstoned_ids_never_come_back_from_the_server(churned):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    coll, dead = churned
    app = create_app(ServerConfig(collections={"photos": coll.path}))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        live = coll.table["id"].to_pylist()
        res = client.get(f"/api/collections/photos/similar/{live[0]}", params={"k": 50})
        assert res.status_code == 200, res.text
        ids = {h["id"] for h in res.json()["hits"]}
        assert ids and not ids & dead
        for fid in dead:
            assert client.get(f"/api/collections/photos/similar/{fid}").status_code == 404


def test_compaction_keeps_every_live_row_and_labels(churned):
    coll, dead = churned
    before = coll.table.sort_by("id")
    q = coll.vectors.vectors[0].astype(np.float32)
    hits = [(h.id, round(h.score, 4)) for h in coll.search_vector(q, k=10)]
    report = compact_collection(coll.layout, force=True)
    assert report["compacted"] and report["files_after"] == 2  # rows, and the caption column
    after = Collection.open(coll.path)
    assert after.table.sort_by("id").equals(before)
    assert [(h.id, round(h.score, 4)) for h in after.search_vector(q, k=10)] == hits
    assert not after.manifest["tombstones"]


def to_format1(path: Path) -> None:
    """Rewrite a collection as format 1 wrote it: one metadata table, no segments."""
    coll = Collection.open(path)
    table = coll.table
    m = dict(coll.manifest)
    gen = int(m["generation"]) + 1
    name = f"metadata-{gen:06d}.parquet"
    metadata.write_table(path / name, table)
    for kind in segments.KINDS:
        m.pop(kind, None)
    m.update(format_version=1, metadata_file=name, generation=gen, checksums={})
    (path / "manifest.json").write_text(json.dumps(m))


def test_format1_opens_and_first_index_migrates_without_reencoding(image_dir, tiny_encoder):
    coll = _index(image_dir)
    coll.use_encoder(tiny_encoder)
    coll.classify(["red", "blue"], write_column="colour")
    to_format1(coll.path)
    old = Collection.open(coll.path)
    assert old.manifest["format_version"] == 1
    q = old.vectors.vectors[3].astype(np.float32)
    before = [(h.relpath, round(h.score, 4)) for h in old.search_vector(q, k=8)]
    filtered = old.filter_ids("colour = 'red'").tolist()
    table = old.table

    new = _index(image_dir)
    assert new.last_report.encoded == 0 and new.manifest["format_version"] == 2
    assert "metadata_file" not in new.manifest and new.manifest["segments"]
    assert [(h.relpath, round(h.score, 4)) for h in new.search_vector(q, k=8)] == before
    assert new.filter_ids("colour = 'red'").tolist() == filtered
    assert new.table.sort_by("id").equals(table.sort_by("id"))


def test_newer_format_is_refused_with_a_clear_message(image_dir):
    coll = _index(image_dir)
    mpath = coll.path / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = 3
    mpath.write_text(json.dumps(m))
    with pytest.raises(CollectionError, match="format 3, newer than this vlmsearch"):
        Collection.open(coll.path)
    with pytest.raises(CollectionError, match="upgrade vlmsearch"):
        _index(image_dir)
    assert json.loads(mpath.read_text())["format_version"] == 3  # left untouched
    assert os.path.exists(coll.path / m["segments"][0]["file"])


def test_in_place_metadata_answers_like_the_copy_and_reads_only_its_files(
    tmp_path: Path, monkeypatch
):
    """Past COPY_MAX_ROWS the reader queries the segments in place: the same ids, rows
    and lookups as the copy, and its DuckDB can read no file but the collection's own."""
    import duckdb

    path = tmp_path / "c"
    write_collection(path, np.zeros((3_000, 8), np.float16), shard_rows=3_000)
    checkpoint_bytes(path, batch=256)  # a second segment and tombstones
    where = "width >= 1900 AND path LIKE 'img/0001/%'"
    answers = {}
    for mode, limit in (("copy", 10**9), ("in_place", 0)):
        monkeypatch.setattr(metadata, "COPY_MAX_ROWS", limit)
        coll = Collection.open(path)
        f = coll.reader.metadata_filter()
        assert f.in_place == (mode == "in_place")
        ids = coll.filter_ids(where)
        rows = coll.rows([0, 5, 200, 2_999, 3_100, 10**6])
        by_path = f.select("SELECT id FROM metadata WHERE path = ?", ["img/0002/00002500.jpg"])
        answers[mode] = (ids.tolist(), sorted(rows), by_path["id"].to_pylist())
        assert len(ids) > 0 and 10**6 not in rows
        assert rows[5]["path"] == "new/5.jpg"  # ids 0..127 were replaced: the new row only
        assert rows[200]["path"] == "img/0000/00000200.jpg"
        outside = tmp_path / "other.parquet"
        metadata.write_table(outside, metadata.empty_table())
        with pytest.raises(duckdb.Error):
            f.select(f"SELECT * FROM read_parquet('{outside}')")
    assert answers["copy"] == answers["in_place"]
