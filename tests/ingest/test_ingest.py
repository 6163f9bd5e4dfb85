"""Incremental indexing: add, change, delete, rebuild, bad files, resume semantics."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, draw_image, make_images
from vlmsearch import Collection
from vlmsearch.errors import CollectionError, ModelError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage.layout import Layout


def _index(root, **kw):
    opts = IngestOptions(batch_size=4, workers=0, **kw)
    return Collection.index(root, model=TINY, options=opts, device="cpu")


def _paths(coll):
    return sorted(coll.table["path"].to_pylist())


def test_first_index_layout_and_manifest(image_dir):
    coll = _index(image_dir)
    rep = coll.last_report
    assert rep.scanned == rep.new == rep.encoded == 15 and rep.errors == 0
    assert coll.path == image_dir / ".vlmsearch"
    m = coll.manifest
    for key in (
        "format_version",
        "encoder",
        "dim",
        "metric",
        "preprocessing",
        "index",
        "counts",
        "created_at",
        "updated_at",
        "vlmsearch_version",
    ):
        assert key in m
    assert m["encoder"]["arch"] == TINY and m["counts"] == {"files": 15, "ok": 15, "error": 0}
    # format 2: the metadata is segments (one per checkpoint), none of them rewritten
    assert m["format_version"] == 2 and m["segments"]
    assert all((coll.path / e["file"]).is_file() for e in m["segments"])
    assert (coll.path / m["index"]["file"]).is_file()
    assert "nested/deeper/deep0000.png" in _paths(coll)
    assert coll.table["id"].to_pylist() == sorted(set(coll.table["id"].to_pylist()))
    assert len(coll.vectors) == 15 and coll.vectors.vectors.dtype == np.float16


def test_vectors_match_encoder(image_dir, tiny_encoder):
    coll = _index(image_dir)
    row = coll.table.to_pylist()[0]
    stored = coll.vectors.get(np.array([row["id"]]))[0]
    direct = tiny_encoder.encode_images([Image.open(image_dir / row["path"]).convert("RGB")])[0]
    np.testing.assert_allclose(stored, direct, atol=2e-3)  # float16 storage


def test_incremental_add_change_delete(image_dir):
    coll = _index(image_dir)
    ids_before = dict(
        zip(coll.table["path"].to_pylist(), coll.table["id"].to_pylist(), strict=False)
    )
    # add two, change one's content, delete one, touch one without changing bytes
    make_images(image_dir / "new", 2, prefix="fresh")
    draw_image(image_dir / "img0001.png", (0, 0, 0), (50, 50), seed=99)
    os.remove(image_dir / "img0002.png")
    later = time.time() + 5
    os.utime(image_dir / "img0003.png", (later, later))
    coll2 = _index(image_dir)
    rep = coll2.last_report
    # the touched file's hash matched: unchanged, not re-encoded
    assert (rep.new, rep.changed, rep.deleted, rep.unchanged) == (2, 1, 1, 13)
    assert rep.encoded == 3
    assert len(coll2.table) == 16 and "img0002.png" not in _paths(coll2)
    ids_after = dict(
        zip(coll2.table["path"].to_pylist(), coll2.table["id"].to_pylist(), strict=False)
    )
    assert ids_after["img0001.png"] == ids_before["img0001.png"]  # stable id
    assert len(set(ids_after.values())) == len(ids_after)
    assert coll2.faiss_index.ntotal == 16
    row = {r["path"]: r for r in coll2.table.to_pylist()}["img0001.png"]
    assert (row["width"], row["height"]) == (50, 50)
    # the deleted file can no longer be found, the changed one is found by its own vector
    vec = coll2.vectors.get(np.array([row["id"]]))[0]
    hits = coll2.search_vector(vec, k=16)
    assert hits[0].relpath == "img0001.png"
    assert "img0002.png" not in [h.relpath for h in hits]
    # a third run has nothing to do
    rep3 = _index(image_dir).last_report
    assert rep3.encoded == 0 and rep3.unchanged == 16


def test_rebuild_reencodes_everything(image_dir):
    _index(image_dir)
    rep = _index(image_dir, rebuild=True).last_report
    assert rep.encoded == 15 and rep.new == 15


def test_bad_files_become_error_rows(image_dir):
    (image_dir / "empty.png").write_bytes(b"")
    (image_dir / "text.jpg").write_bytes(b"this is not an image at all")
    good = (image_dir / "img0000.png").read_bytes()
    (image_dir / "truncated.png").write_bytes(good[: len(good) // 2])
    unreadable = image_dir / "secret.png"
    unreadable.write_bytes(good)
    unreadable.chmod(0)
    bomb = image_dir / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 Mpx, a few KB on disk
    try:
        coll = _index(image_dir)
    finally:
        unreadable.chmod(0o644)
    rows = {r["path"]: r for r in coll.table.to_pylist()}
    expected_bad = ["empty.png", "text.jpg", "truncated.png", "bomb.png"]
    if os.geteuid() != 0:  # root can read a 0o000 file
        expected_bad.append("secret.png")
    for name in expected_bad:
        assert rows[name]["status"] == "error", name
        assert rows[name]["error"], name
    assert "decompression" in rows["bomb.png"]["error"]
    assert "empty" in rows["empty.png"]["error"]
    assert coll.last_report.errors == len(expected_bad)
    assert len(coll) == len(rows) - len(expected_bad)
    # an error row is not retried until the file changes ...
    assert _index(image_dir).last_report.encoded == 0
    # ... and is repaired when it does
    draw_image(image_dir / "text.jpg", (1, 2, 3))
    os.utime(image_dir / "text.jpg", (time.time() + 10, time.time() + 10))
    coll3 = _index(image_dir)
    assert {r["path"]: r for r in coll3.table.to_pylist()}["text.jpg"]["status"] == "ok"


def test_model_mismatch_and_wrong_root(image_dir, tmp_path, tiny_encoder):
    _index(image_dir)
    with pytest.raises(ModelError, match="model mismatch"):
        Collection.index(image_dir, model="ViT-B-32", options=IngestOptions(workers=0))
    other = tmp_path / "other"
    make_images(other, 2)
    with pytest.raises(CollectionError, match="indexes"):
        Collection.index(other, collection=image_dir / ".vlmsearch", model=TINY)
    with pytest.raises(CollectionError, match="no such file or folder"):
        Collection.index(tmp_path / "missing", model=TINY)


def test_writer_lock_gives_clear_error(image_dir):
    coll = _index(image_dir)
    with Layout(coll.path).lock(), pytest.raises(CollectionError, match="another vlmsearch"):
        _index(image_dir)


def test_hidden_and_collection_dir_are_skipped(image_dir):
    make_images(image_dir / ".hidden", 2)
    coll = _index(image_dir)
    assert not any(p.startswith(".") for p in _paths(coll))
    coll2 = _index(image_dir, include_hidden=True)
    paths = _paths(coll2)
    assert ".hidden/img0000.png" in paths
    assert not any(p.startswith(".vlmsearch") for p in paths)


def test_symlink_loop_terminates(image_dir):
    os.symlink(image_dir, image_dir / "nested" / "loop")
    coll = _index(image_dir)
    assert len(coll.table) == 15


def test_exif_orientation_and_modes(tmp_path, tiny_encoder):
    from vlmsearch.imaging.decode import decode_image

    im = Image.new("RGB", (60, 30), (200, 10, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    decoded, fmt = decode_image((tmp_path / "rot.jpg").read_bytes())
    assert decoded.size == (30, 60) and fmt == "JPEG"
    for mode in ("L", "P", "RGBA", "CMYK", "I;16", "LA"):
        path = tmp_path / f"m_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (10, 10)).save(path) if mode != "I;16" else Image.new(mode, (10, 10)).save(
            path
        )
        out, _ = decode_image(path.read_bytes())
        assert out.mode == "RGB", mode
