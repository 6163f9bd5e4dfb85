"""Importing a clip-retrieval inference folder: the same vectors, ids and search results
as indexing the images, captions and fields as columns, a later `index` that encodes
nothing, a resumed import without duplicates, one-line errors for bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli_helpers import one_line_error, run
from tests.conftest import TINY
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.ingest import import_clip_retrieval as icr
from vlmsearch.ingest.options import IngestOptions


def _write_inference(out: Path, paths: list[str], vectors: np.ndarray, split: int) -> None:
    """A clip-retrieval inference folder in two partitions, as its writer lays it out."""
    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    for n, (lo, hi) in enumerate([(0, split), (split, len(paths))]):
        np.save(out / "img_emb" / f"img_emb_{n}.npy", vectors[lo:hi].astype(np.float16))
        table = pa.table(
            {
                "image_path": paths[lo:hi],
                "caption": [f"picture {i}" for i in range(lo, hi)],
                "width": list(range(lo, hi)),  # a field named like a built-in column
                "exif.Image Make": ["cam"] * (hi - lo),
            }
        )
        pq.write_table(table, out / "metadata" / f"metadata_{n}.parquet")


@pytest.fixture
def indexed(image_dir: Path) -> Collection:
    return Collection.index(image_dir, model=TINY, options=IngestOptions(workers=0))


@pytest.fixture
def inference(tmp_path: Path, indexed: Collection) -> tuple[Path, list[str], np.ndarray]:
    vt = indexed.vectors
    rows = indexed.rows(vt.ids)
    paths = [str(indexed.root / rows[int(i)]["path"]) for i in vt.ids]
    folder = tmp_path / "cr-out"
    vectors = vt.vectors.astype(np.float32)
    _write_inference(folder, paths, vectors, split=6)
    return folder, paths, vectors


def test_import_equals_indexing(tmp_path, indexed, inference, tiny_encoder):
    folder, paths, vectors = inference
    coll = Collection.import_clip_retrieval(folder, tmp_path / "c", tiny_encoder)
    assert coll.last_report.new == len(paths) and Path(coll.manifest["root"]) == indexed.root
    vt = coll.vectors
    np.testing.assert_array_equal(vt.ids, np.arange(len(paths)))  # partition order
    cos = np.sum(vt.vectors.astype(np.float32) * vectors, axis=1)
    assert cos.min() >= 0.9999
    for row in (0, 7, len(paths) - 1):
        q = vectors[row]
        got = [(h.relpath, round(h.score, 4)) for h in coll.search_vector(q, k=5)]
        want = [(h.relpath, round(h.score, 4)) for h in indexed.search_vector(q, k=5)]
        assert got == want
    rows = coll.rows([3])
    assert rows[3]["caption"] == "picture 3" and rows[3]["source_width"] == 3
    assert rows[3]["exif_Image_Make"] == "cam"
    assert coll.filter_ids("caption = 'picture 8'").tolist() == [8]
    assert coll.manifest["source"]["parts_done"] == ["0", "1"]
    # the files are unchanged: a later `index` of the root encodes none of them
    again = Collection.index(
        indexed.root, collection=tmp_path / "c", model=TINY, options=IngestOptions(workers=0)
    )
    assert again.last_report.encoded == 0 and len(again.vectors) == len(paths)


def test_interrupted_import_resumes_without_duplicates(
    tmp_path, inference, tiny_encoder, monkeypatch
):
    folder, paths, _ = inference
    real = icr._commit_part
    calls = []

    def fail_on_second(writer, part, base):
        calls.append(part.number)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between two partition commits
        real(writer, part, base)

    monkeypatch.setattr(icr, "_commit_part", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        Collection.import_clip_retrieval(folder, tmp_path / "c", tiny_encoder)
    monkeypatch.setattr(icr, "_commit_part", real)
    first = Collection.open(tmp_path / "c")
    assert len(first.filter_ids(None)) == 6 and first.manifest["source"]["parts_done"] == ["0"]
    coll = Collection.import_clip_retrieval(folder, tmp_path / "c", tiny_encoder)
    assert coll.last_report.unchanged == 6 and coll.last_report.new == len(paths) - 6
    ids = coll.filter_ids(None)
    np.testing.assert_array_equal(ids, np.arange(len(paths)))
    assert sorted(r["caption"] for r in coll.rows(ids).values()) == sorted(
        f"picture {i}" for i in range(len(paths))
    )


def test_bad_folders_are_one_line_errors(tmp_path, inference, tiny_encoder, indexed):
    folder, _, _ = inference
    with pytest.raises(CollectionError, match="not a clip-retrieval inference folder"):
        icr.find_parts(tmp_path)
    # another collection is never written into
    with pytest.raises(CollectionError, match="already a collection"):
        Collection.import_clip_retrieval(folder, indexed.path, tiny_encoder)
    # rows and vectors that disagree
    bad = tmp_path / "bad"
    _write_inference(bad, ["a.jpg", "b.jpg", "c.jpg"], np.eye(3, 32, dtype=np.float32), 2)
    np.save(bad / "img_emb" / "img_emb_1.npy", np.zeros((5, 32), np.float16))
    with pytest.raises(CollectionError, match="holds"):
        icr.find_parts(bad)
    # a model of another dimension
    wrong = tmp_path / "wrong"
    _write_inference(wrong, ["a.jpg", "b.jpg"], np.eye(2, 16, dtype=np.float32), 1)
    with pytest.raises(CollectionError, match="16 dimensions"):
        Collection.import_clip_retrieval(wrong, tmp_path / "w", tiny_encoder)
    assert not (tmp_path / "w" / "manifest.json").exists()


def test_cli_checks_the_folder_before_loading_the_model(tmp_path):
    res = run("import", "clip-retrieval", tmp_path, "--model", "no-such-model/x")
    one_line_error(res, "not a clip-retrieval inference folder")
