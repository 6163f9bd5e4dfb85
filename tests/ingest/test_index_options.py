"""``--index`` and the per-query index options (issue 15, item 4): a bad index spec is one
line before anything is encoded, and options the collection's index does not read
(``--index``/``--nprobe`` on ASIF, ``--nprobe`` on HNSW or flat, ...) are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import one_line_error, run
from tests.conftest import TINY, make_images
from tests.models.test_asif_collection import AsifColl, asif_coll  # noqa: F401  (fixture)
from vlmsearch.errors import QueryError
from vlmsearch.ingest import pipeline as ingest
from vlmsearch.storage.ann import plan as faiss_plan


@pytest.fixture
def no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any image encoded fails the test: the refusals must come first."""

    def encode(*a, **k):
        raise AssertionError("encoded images before refusing the index option")

    monkeypatch.setattr(ingest, "_run", encode)


def test_bad_index_spec_fails_before_encoding(tmp_path: Path, no_encoding: None) -> None:
    root = tmp_path / "pics"
    make_images(root, 3)
    res = run("index", root, "--model", TINY, "--index", "bogus", "--workers", "0", "-q")
    line = one_line_error(res, "--index", "bogus", "could not parse")
    assert "faiss::" not in line and ".cpp" not in line
    res = run("index", root, "--model", TINY, "--index", "IVF4,PQ7", "--workers", "0", "-q")
    one_line_error(res, "IVF4,PQ7", "multiple of")
    assert not (root / ".vlmsearch").exists()  # nothing created either


def test_bad_index_spec_on_an_existing_collection(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    make_images(root, 3)
    assert run("index", root, "--model", TINY, "--workers", "0", "-q").exit_code == 0
    before = (root / ".vlmsearch" / "manifest.json").read_text()
    make_images(root, 2, prefix="new")
    res = run("index", root, "--index", "bogus", "--workers", "0", "-q")
    one_line_error(res, "could not parse")
    assert (root / ".vlmsearch" / "manifest.json").read_text() == before
    # a factory string FAISS accepts still works
    res = run("index", root, "--index", "HNSW16", "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["index_factory"] == "HNSW16"


def test_search_options_the_index_does_not_read(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    make_images(root, 4)
    assert run("index", root, "--model", TINY, "--workers", "0", "-q").exit_code == 0  # Flat
    one_line_error(run("search", "red", "-c", root, "--nprobe", "4"), "nprobe", "Flat")
    one_line_error(run("search", "red", "-c", root, "--ef-search", "64"), "efSearch", "Flat")
    assert run("index", root, "--index", "hnsw", "--workers", "0", "-q").exit_code == 0
    res = run("search", "red", "-c", root, "--ef-search", "64", "-k", "2", "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 2, res.output
    one_line_error(run("search", "red", "-c", root, "--nprobe", "4"), "nprobe", "HNSW")
    # the Python API refuses them the same way
    from vlmsearch import Collection

    with pytest.raises(QueryError, match="nprobe"):
        Collection.open(root).search("red", params={"nprobe": 4})


def test_asif_collection_refuses_index_and_nprobe(
    asif_coll: AsifColl,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    def encode(*a, **k):
        raise AssertionError("encoded images before refusing --index")

    photo = asif_coll.files[0]
    res = run("search", "a photo", "-c", asif_coll.root, "--nprobe", "4")
    one_line_error(res, "nprobe", "ASIF")
    res = run("search", "--image", photo, "-c", asif_coll.root, "--ef-search", "32")
    one_line_error(res, "efSearch", "ASIF")
    make_images(asif_coll.root / "more", 2)
    with monkeypatch.context() as mp:
        mp.setattr(ingest, "_run", encode)
        for spec in ("bogus", "hnsw", "Flat"):
            res = run("index", asif_coll.root, "--index", spec, "--workers", "0", "-q")
            one_line_error(res, f"--index {spec}", "ASIF")
    res = run("index", asif_coll.root, "--index", "auto", "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["new"] == 2


def test_faiss_messages_lose_their_source_location() -> None:
    with pytest.raises(QueryError) as info:
        faiss_plan.check_index_request("IVF8,PQ5", 512, sparse=False)
    assert "subquantizers" in str(info.value) and "ProductQuantizer.cpp" not in str(info.value)
    faiss_plan.check_index_request("IVF8,PQ8", 512, sparse=False)  # 512 % 8 == 0
    faiss_plan.check_index_request(None, 512, sparse=True)
