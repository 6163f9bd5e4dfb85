"""Dataset inputs: webdataset tar shards, Parquet files with an image column, and
img2dataset's files layout, indexed item by item with stable keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import TINY
from tests.ingest import datasets as D
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.ingest.options import IngestOptions

OPTS = IngestOptions(workers=0)


def _index(paths, encoder, coll: Path | None = None, **kw) -> Collection:
    opts = IngestOptions(workers=kw.pop("workers", 0), **kw)
    return Collection.index(paths, coll, encoder=encoder, options=opts, text_onnx=False)


def _rows(c: Collection) -> dict[str, dict]:
    return {r["path"]: r for r in c.table.to_pylist()}


def _vectors(c: Collection) -> dict[str, np.ndarray]:
    vt = c.vectors
    paths = dict(zip(c.table["id"].to_pylist(), c.table["path"].to_pylist(), strict=True))
    out = {}
    for i, v in zip(vt.ids.tolist(), np.asarray(vt.get(vt.ids), np.float32), strict=True):
        out[paths[i]] = v / np.linalg.norm(v)
    return out


def _folder_vectors(tmp: Path, encoder, n: int) -> list[np.ndarray]:
    """The same generated images indexed from a folder: the reference embeddings."""
    folder = tmp / "ref"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:04d}.png").write_bytes(D.image_bytes(i, tmp))
    vecs = _vectors(_index(folder, encoder))
    return [vecs[f"{i:04d}.png"] for i in range(n)]


def test_webdataset_shards_with_bad_items(tmp_path: Path, tiny_encoder) -> None:
    data = tmp_path / "data"
    D.webdataset_shard(data / "00000.tar", 0, 6, tmp_path)
    D.webdataset_shard(data / "00001.tar", 6, 6, tmp_path)
    # a third shard: one corrupt image, one caption without its image, and cut short in
    # the middle of its last image
    bad = {
        "b0.png": b"not an image at all",
        "b1.txt": b"a caption whose image is missing",
        "b2.png": D.image_bytes(3, tmp_path),
        "b3.png": D.image_bytes(4, tmp_path),
    }
    shard = D.write_tar(data / "00002.tar", bad)
    raw = shard.read_bytes()
    shard.write_bytes(raw[: raw.index(bad["b3.png"]) + 100])
    c = _index([data / "00000.tar", data / "00001.tar", data / "00002.tar"], tiny_encoder)
    rep = c.last_report
    rows = _rows(c)
    assert rep.new == 16 and rep.encoded == 13  # 12 good + b2
    ok = sorted(p for p, r in rows.items() if r["status"] == "ok")
    assert len(ok) == 13 and "00002.tar/b2.png" in ok
    assert rows["00002.tar/b0.png"]["status"] == "error"
    assert "not an image" in rows["00002.tar/b0.png"]["error"]
    assert "no image for key 'b1'" in rows["00002.tar/b1"]["error"]
    assert rows["00002.tar/b1"]["caption"] == "a caption whose image is missing"
    assert "truncated" in rows["00002.tar/b3.png"]["error"]
    # captions and .json fields are columns; a field named like a built-in gets a prefix
    r7 = rows["00001.tar/000000007.png"]
    assert r7["caption"] == "a green square" and r7["key"] == "000000007"
    assert r7["source_width"] == 40 + 7 % 7 == r7["width"]
    # the same pixels give the same embeddings as a folder of files
    ref = _folder_vectors(tmp_path, tiny_encoder, 12)
    vecs = _vectors(c)
    for i in range(12):
        got = vecs[f"{i // 6:05d}.tar/{i:09d}.png"]
        assert float(got @ ref[i]) >= 0.9999
    again = _index([data / "00000.tar", data / "00001.tar", data / "00002.tar"], tiny_encoder)
    assert again.last_report.encoded == 0 and again.last_report.unchanged == 16
    # captions are searchable as a text column, and --where sees them
    hits = again.search("a red square", k=3, where="caption = 'a red square'")
    assert {h.relpath for h in hits} == {"00000.tar/000000000.png", "00001.tar/000000006.png"}


def test_shards_change_incrementally(tmp_path: Path, tiny_encoder) -> None:
    data = tmp_path / "data"
    D.webdataset_shard(data / "00000.tar", 0, 5, tmp_path)
    D.webdataset_shard(data / "00001.tar", 5, 5, tmp_path)
    c = _index(data, tiny_encoder)  # a folder of shards
    ids = {r["path"]: r["id"] for r in c.table.to_pylist()}
    assert len(ids) == 10
    # shard 1 rewritten with one image replaced: only that one is re-encoded, ids stay
    D.webdataset_shard(data / "00001.tar", 5, 5, tmp_path)
    st = (data / "00001.tar").stat()
    os.utime(data / "00001.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    members = {}
    import tarfile

    with tarfile.open(data / "00001.tar") as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read()
    members["000000007.png"] = D.image_bytes(1, tmp_path)
    D.write_tar(data / "00001.tar", members)
    rep = _index(data, tiny_encoder).last_report
    assert (rep.changed, rep.unchanged, rep.encoded) == (1, 9, 1)
    # naming one shard leaves the other's rows alone; removing a shard deletes its rows
    D.webdataset_shard(data / "00002.tar", 10, 3, tmp_path)
    rep = _index([data / "00002.tar"], tiny_encoder, coll=data / ".vlmsearch").last_report
    assert (rep.new, rep.deleted) == (3, 0)
    (data / "00000.tar").unlink()
    c = _index(data, tiny_encoder)
    assert c.last_report.deleted == 5 and len(c.table) == 8
    after = {r["path"]: r["id"] for r in c.table.to_pylist()}
    assert all(after[p] == ids[p] for p in after if p in ids)


@pytest.mark.parametrize("kind", ["bytes", "struct", "path"])
def test_parquet_image_columns(tmp_path: Path, tiny_encoder, kind: str) -> None:
    data = tmp_path / "data"
    D.parquet_dataset(data / "part-0.parquet", 0, 9, tmp_path, kind)
    # img2dataset's metadata-only Parquet beside it has no image column: skipped in a folder
    pq.write_table(
        pq.read_table(data / "part-0.parquet").drop_columns(
            [
                c
                for c in ("jpg", "image", "file")
                if c in pq.read_schema(data / "part-0.parquet").names
            ]
        ),
        data / "meta.parquet",
    )
    # path strings: relative to a base folder outside the indexed one
    path_kw = {"image_column": "file", "image_base": str(tmp_path)} if kind == "path" else {}
    c = _index(data, tiny_encoder, **path_kw)
    rows = _rows(c)
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows.values())
    keys = [f"{i:09d}" for i in range(9)] if kind == "bytes" else [str(i) for i in range(9)]
    assert sorted(rows) == sorted(f"part-0.parquet/{k}" for k in keys)
    text = "text" if kind == "struct" else "caption"
    assert rows[f"part-0.parquet/{keys[2]}"][text] == "a blue square"
    ref = _folder_vectors(tmp_path, tiny_encoder, 9)
    vecs = _vectors(c)
    for i, k in enumerate(keys):
        assert float(vecs[f"part-0.parquet/{k}"] @ ref[i]) >= 0.9999
    again = _index(data, tiny_encoder)  # the image column is remembered
    assert again.last_report.unchanged == 9 and again.last_report.encoded == 0


def test_parquet_named_without_images_is_reported(tmp_path: Path, tiny_encoder) -> None:
    data = tmp_path / "data"
    D.parquet_dataset(data / "a.parquet", 0, 3, tmp_path, "bytes")
    pq.write_table(pq.read_table(data / "a.parquet").drop_columns(["jpg"]), data / "m.parquet")
    c = _index([data / "a.parquet", data / "m.parquet"], tiny_encoder)
    assert len(c.table) == 3
    assert any(p == "m.parquet" and "no image column" in e for p, e in c.last_report.error_samples)


def test_files_layout_sidecars(tmp_path: Path, tiny_encoder) -> None:
    folder = D.files_layout(tmp_path / "00000", 0, 4, tmp_path)
    c = _index(folder, tiny_encoder)
    rows = _rows(c)
    assert len(rows) == 4  # the .txt and .json files are not images
    r = rows["000000001.png"]
    assert r["caption"] == "a green square" and r["source_status"] == "success"
    assert r["status"] == "ok" and r["key"] == "000000001"


def test_server_serves_members(tmp_path: Path, tiny_encoder) -> None:
    from fastapi.testclient import TestClient

    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    data = tmp_path / "data"
    D.webdataset_shard(data / "00000.tar", 0, 3, tmp_path)
    D.parquet_dataset(data / "p.parquet", 3, 2, tmp_path, "struct")
    c = _index(data, tiny_encoder)
    rows = _rows(c)
    app = create_app(ServerConfig(collections={"d": c.path}))
    client = TestClient(app, base_url="http://127.0.0.1")
    tar_id = rows["00000.tar/000000001.png"]["id"]
    got = client.get(f"/api/collections/d/images/{tar_id}")
    assert got.status_code == 200 and got.content == D.image_bytes(1, tmp_path)
    assert got.headers["content-type"] == "image/png"
    pq_id = rows["p.parquet/1"]["id"]
    got = client.get(f"/api/collections/d/images/{pq_id}")
    assert got.status_code == 200 and got.content == D.image_bytes(4, tmp_path)
    thumb = client.get(f"/api/collections/d/thumbs/{tar_id}")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    # a shard replaced since indexing is not served as if it were the indexed one
    D.webdataset_shard(data / "00000.tar", 10, 3, tmp_path)
    st = (data / "00000.tar").stat()
    os.utime(data / "00000.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert client.get(f"/api/collections/d/images/{tar_id}").status_code == 409


def test_cli_indexes_shards(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vlmsearch.cli.app import app

    data = tmp_path / "data"
    D.webdataset_shard(data / "00000.tar", 0, 3, tmp_path)
    D.webdataset_shard(data / "00001.tar", 3, 3, tmp_path)
    coll = tmp_path / "c"
    args = ["index", str(data / "00000.tar"), str(data / "00001.tar"), "-c", str(coll)]
    res = CliRunner().invoke(app, [*args, "-m", TINY, "--json", "--workers", "0"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["new"] == 6 and report["encoded"] == 6
    res = CliRunner().invoke(app, ["index", str(data / "nope.tar"), "-c", str(coll)])
    assert res.exit_code != 0 and "no such file or folder" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert len(Collection.open(coll)) == 6  # the failed run changed nothing


def test_collection_folders_are_not_indexed_as_datasets(tmp_path):
    """A collection's own Parquet segments are metadata: naming the collection is a
    one-line error, and a collection inside the scanned folder is skipped."""
    photos, other = tmp_path / "photos", tmp_path / "other"
    for folder in (photos, other):
        folder.mkdir()
        for i in range(2):
            Image.new("RGB", (32, 24), (i * 100, 10, 10)).save(folder / f"p{i}.png")
    opts = IngestOptions(workers=0)
    Collection.index(other, photos / "coll", model=TINY, options=opts)  # kept in photos/
    coll = Collection.index(photos, tmp_path / "c1", model=TINY, options=opts)
    report = coll.last_report
    assert (report.scanned, report.new, report.errors) == (2, 2, 0)  # not its segments
    with pytest.raises(CollectionError, match="collection's own files"):
        Collection.index(photos / "coll", tmp_path / "c2", model=TINY)
    seg = next((photos / "coll").glob("seg-*.parquet"))
    with pytest.raises(CollectionError, match="collection's own files"):
        Collection.index([seg], tmp_path / "c2", model=TINY)
    assert not (tmp_path / "c2").exists()
