"""``min_score`` (a relevance cut-off) and ``sort`` (the kept hits by a column) through the
Python API, the CLI and the server."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.cli_helpers import one_line_error, run
from tests.conftest import TINY
from vlmsearch import Collection
from vlmsearch.errors import QueryError
from vlmsearch.ingest.options import IngestOptions

COLOURS = ["red", "green", "blue", "yellow", "purple", "white", "black", "orange"]
# two ties (2021-05-05 twice, 2019-01-01 twice) and two images without EXIF
DATES = ["2021:05:05 10:00:00", "2019:01:01 00:00:00", None, "2021:05:05 10:00:00",
         "2023:03:03 03:03:03", None, "2019:01:01 00:00:00", "2020:02:02 02:02:02"]  # fmt: skip


@pytest.fixture(scope="module")
def coll(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    root = tmp_path_factory.mktemp("sort") / "photos"
    root.mkdir()
    for i, (colour, when) in enumerate(zip(COLOURS, DATES, strict=True)):
        e = Image.Exif()
        if when:
            e.get_ifd(0x8769)[0x9003] = when
        Image.new("RGB", (40, 32), colour).save(root / f"p{i}.jpg", "JPEG", exif=e)
    opts = IngestOptions(batch_size=4, workers=0)
    return Collection.index(root, model=TINY, options=opts, device="cpu")


def _taken(coll: Collection) -> dict[int, object]:
    return {r["id"]: r["taken_at"] for r in coll.table.to_pylist()}


@pytest.mark.parametrize("descending", [False, True])
def test_sort_orders_ties_by_relevance_and_nulls_last(coll: Collection, descending: bool):
    relevance = coll.search("a colourful photo", k=8)
    taken = _taken(coll)
    spec = "-taken_at" if descending else "taken_at"
    hits = coll.search("a colourful photo", k=8, sort=spec)
    assert [h.rank for h in hits] == list(range(1, 9))
    assert sorted(h.id for h in hits) == sorted(h.id for h in relevance)
    pos = {h.id: n for n, h in enumerate(relevance)}
    dated = [h for h in hits if taken[h.id] is not None]
    assert len(dated) == 6 and all(taken[h.id] is None for h in hits[6:])
    for a, b in zip(dated, dated[1:], strict=False):
        ta, tb = taken[a.id], taken[b.id]
        assert (ta >= tb) if descending else (ta <= tb)
        if ta == tb:  # a tie keeps the relevance order
            assert pos[a.id] < pos[b.id]
    assert pos[hits[6].id] < pos[hits[7].id]  # nulls too
    assert {h.score for h in hits} == {h.score for h in relevance}


def test_min_score_cuts_before_sorting(coll: Collection):
    relevance = coll.search("a colourful photo", k=8)
    cut = relevance[2].score
    kept = coll.search("a colourful photo", k=8, min_score=cut)
    assert [h.id for h in kept] == [h.id for h in relevance if h.score >= cut]
    assert len(kept) >= 3 and all(h.score >= cut for h in kept)
    assert [h.rank for h in kept] == list(range(1, len(kept) + 1))
    both = coll.search("a colourful photo", k=8, min_score=cut, sort="-taken_at")
    assert sorted(h.id for h in both) == sorted(h.id for h in kept)
    assert coll.search("a colourful photo", k=8, min_score=10.0) == []


def test_bad_sort_and_min_score_are_refused(coll: Collection):
    with pytest.raises(QueryError, match=r"sortable: .*taken_at"):
        coll.search("x", sort="no_such_column")
    with pytest.raises(QueryError, match="sortable"):
        coll.search("x", sort="path_bytes")  # binary: not sortable
    with pytest.raises(QueryError, match="must be a number"):
        coll.search("x", min_score="high")  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="must be a number"):
        coll.search("x", min_score=float("nan"))


def test_cli_sort_and_min_score(coll: Collection):
    res = run("search", "a photo", "-c", coll.path, "--sort", "-taken_at", "--json", "-k", "8")
    assert res.exit_code == 0, res.output
    one_line_error(
        run("search", "a photo", "-c", coll.path, "--sort", "nope"),
        "cannot sort by 'nope'",
        "taken_at",
    )
    bad = run("search", "a photo", "-c", coll.path, "--min-score", "abc")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_server_request_fields(coll: Collection):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    app = create_app(ServerConfig(collections={"photos": coll.path}))
    client = TestClient(app, base_url="http://127.0.0.1")
    url = "/api/collections/photos/search"
    relevance = client.post(url, json={"text": "a photo", "k": 8}).json()["hits"]
    cut = relevance[3]["score"]
    got = client.post(url, json={"text": "a photo", "k": 8, "min_score": cut, "sort": "taken_at"})
    assert got.status_code == 200, got.text
    hits = got.json()["hits"]
    assert sorted(h["id"] for h in hits) == sorted(h["id"] for h in relevance if h["score"] >= cut)
    dates = [h["taken_at"] for h in hits if h["taken_at"] is not None]
    assert dates == sorted(dates)
    bad = client.post(url, json={"text": "a photo", "sort": "nope"})
    assert bad.status_code == 400 and "sortable" in bad.json()["error"]
    bad = client.post(url, json={"text": "a photo", "min_score": "high"})
    assert bad.status_code == 422
