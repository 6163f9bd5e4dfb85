"""Near-duplicate groups (``Collection.duplicates``, ``vlmsearch duplicates``) and
``search(dedupe=...)``.

The tiny random model puts distinct drawings close together, so exact copies (identical
bytes: cosine 1) are the duplicates here, and the threshold is set above the largest
similarity of two distinct images; grouping, keepers and order are also checked on
vectors built by hand."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.cli_helpers import ok, one_line_error, run
from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.errors import QueryError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.search import duplicates as dup
from vlmsearch.search.duplicates import dedupe_hits, find_duplicates

# img0000 has two copies, img0005 one; the copies are newer, except copy_b (older)
COPIES = {"copy_a.png": "img0000.png", "copy_b.png": "img0000.png", "copy_c.png": "img0005.png"}


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dups")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp / "state"))
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        root = tmp / "photos"
        make_images(root, 24)
        for copy, original in COPIES.items():
            shutil.copyfile(root / original, root / copy)
            t = os.stat(root / original).st_mtime_ns + (-(10**9) if copy == "copy_b.png" else 10**9)
            os.utime(root / copy, ns=(t, t))
        c = Collection.index(root, model=TINY, options=IngestOptions(workers=0), device="cpu")
        yield c


def _by_name(coll):
    rows = coll.rows(coll.vectors.ids)
    return {r["path"]: i for i, r in rows.items()}


def _threshold(coll):
    """Halfway between the closest two distinct images and 1."""
    names = _by_name(coll)
    copies = {names[c] for c in COPIES}
    ids = [i for i in coll.vectors.ids.tolist() if i not in copies]
    v = coll.vectors.dense(np.asarray(ids))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    closest = float(s[np.triu_indices(len(ids), 1)].max())
    assert closest < 1 - 1e-5, "two distinct drawings encode alike; the test needs others"
    return (closest + 1) / 2


def test_exact_copies_group_with_keeper(coll):
    names = _by_name(coll)
    groups = coll.duplicates(_threshold(coll))
    assert [len(g) for g in groups] == [3, 2]  # largest first
    big, small = groups
    # same size: the oldest file is kept (copy_b predates its original)
    assert big.keeper == names["copy_b.png"]
    assert sorted(big.others) == sorted([names["img0000.png"], names["copy_a.png"]])
    assert small.keeper == names["img0005.png"]
    assert small.others == [names["copy_c.png"]]
    assert all(s > 0.99999 for g in groups for s in g.similarity)
    assert big.paths[big.keeper].endswith("copy_b.png")
    d = big.to_dict()
    assert d["size"] == 3 and d["keeper"]["id"] == big.keeper
    assert {"id", "path", "similarity"} <= set(d["others"][0])


def test_where_limits_the_rows_compared(coll):
    groups = coll.duplicates(_threshold(coll), where="path LIKE 'img%'")
    assert groups == []
    groups = coll.duplicates(_threshold(coll), where="path <> 'copy_b.png'")
    assert [len(g) for g in groups] == [2, 2]


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_bad_threshold(coll, bad):
    with pytest.raises(QueryError, match=r"\(0, 1\]"):
        coll.duplicates(bad)


def test_dedupe_search_removes_exactly_the_copies(coll):
    names = _by_name(coll)
    n = len(coll)
    plain = coll.search(image=str(coll.root / "img0000.png"), k=n)
    assert len(plain) == n
    deduped = coll.search(image=str(coll.root / "img0000.png"), k=n, dedupe=_threshold(coll))
    assert len(deduped) == n - len(COPIES)
    assert [h.rank for h in deduped] == list(range(1, len(deduped) + 1))
    got = {h.id for h in deduped}
    for group in ({"img0000.png", "copy_a.png", "copy_b.png"}, {"img0005.png", "copy_c.png"}):
        assert len(got & {names[p] for p in group}) == 1
    # a group keeps its best-ranked member, and k is filled after collapsing
    assert deduped[0].id == plain[0].id
    thr = _threshold(coll)
    assert len(coll.search(image=str(coll.root / "img0000.png"), k=5, dedupe=thr)) == 5
    assert len(coll.search(image=str(coll.root / "img0000.png"), k=5, dedupe=True)) >= 1
    with pytest.raises(QueryError):
        coll.search("a red square", dedupe=2.0)


def _vectors():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((50, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[10] = v[3]  # group {3, 10, 20}: 20 is near 10 only through a chain
    v[20] = v[10] + 0.05 * rng.standard_normal(32)
    v[40] = v[7]  # group {7, 40}
    return v


@pytest.mark.parametrize("kind", ["dense", "ivf", "sparse"])
def test_find_duplicates_on_given_vectors(kind):
    import scipy.sparse as sp

    v = _vectors()
    ids = np.arange(50) * 10 + 1000
    rows = sp.csr_matrix(v) if kind == "sparse" else v.astype(np.float16)
    extra = {"exact_max": 10} if kind == "ivf" else {}
    groups = find_duplicates(ids, rows, 0.94, **extra)
    assert [g.ids for g in groups] == [[1030, 1100, 1200], [1070, 1400]]
    # a keeper key: the highest id wins
    groups = find_duplicates(ids, rows, 0.94, keeper_key=lambda m: {i: (-i,) for i in m.tolist()})
    assert [g.keeper for g in groups] == [1200, 1400]
    assert find_duplicates(ids, rows, 1.0) == [] or all(len(g) >= 2 for g in groups)


def test_transitive_chain_and_progress():
    v = np.zeros((4, 2), np.float32)
    angles = np.radians([0, 15, 30, 90])  # cos 15 deg = 0.966: 0-1, 1-2, not 0-2
    v[:, 0], v[:, 1] = np.cos(angles), np.sin(angles)
    calls = []
    groups = find_duplicates([5, 6, 7, 8], v, 0.95, progress=lambda *a: calls.append(a))
    assert [g.ids for g in groups] == [[5, 6, 7]]
    assert groups[0].similarity[1] < 0.95  # to the keeper, through the chain
    assert sum(c[1] for c in calls) == 4 and calls[0][0] == "duplicates"


def test_keeper_rank_prefers_large_then_old():
    rows = [
        {"width": 10, "height": 10, "mtime_ns": 1},
        {"width": 20, "height": 10, "mtime_ns": 5},
        {"width": 20, "height": 10, "mtime_ns": 3},
    ]
    ranked = sorted(range(3), key=lambda k: dup._keeper_rank(rows[k]))
    assert ranked == [2, 1, 0]


def test_dedupe_hits_keeps_best_ranked():
    from vlmsearch.results import Hit

    v = _vectors()
    hits = [
        Hit(rank=r, score=1 - r / 100, id=i, path="", relpath="")
        for r, i in enumerate([10, 4, 3, 20, 7, 40], 1)
    ]
    kept = dedupe_hits(hits, lambda ids: v[ids], 0.94)
    assert [h.id for h in kept] == [10, 4, 7]
    assert [h.rank for h in kept] == [1, 2, 3]


def test_cli_duplicates(coll, tmp_path):
    thr = _threshold(coll)
    res = run("duplicates", "-c", coll.path, "--threshold", thr, "--json")
    ok(res)
    data = json.loads(res.stdout)
    assert [g["size"] for g in data] == [3, 2]
    assert set(data[0]) == {"size", "keeper", "others"}
    res = run("duplicates", "-c", coll.path, "--threshold", thr, "--csv")
    ok(res)
    assert res.stdout.splitlines()[0] == "group,role,id,path,similarity"
    assert len(res.stdout.splitlines()) == 1 + 5
    page = tmp_path / "d.html"
    res = run("duplicates", "-c", coll.path, "--threshold", thr, "--html", page)
    ok(res)
    assert "copy_b.png" in res.stdout and "2 groups, 3 images could go" in res.stderr
    text = page.read_text()
    assert text.count('src="data:image/jpeg;base64,') == 5 and text.count('href="file://') == 5


def test_cli_duplicates_errors(coll, tmp_path):
    one_line_error(run("duplicates", "-c", coll.path, "--threshold", "1.5"), "(0, 1]")
    one_line_error(run("duplicates", "-c", coll.path, "--where", "nosuch = 1"), "where")
    one_line_error(run("duplicates", "-c", coll.path, "--json", "--csv"), "--json")
    one_line_error(run("duplicates", "-c", tmp_path / "missing"))
    one_line_error(run("duplicates", "-c", coll.path, "--html", tmp_path / "no" / "x.html"))
    res = run("duplicates", "--help")
    ok(res)
    assert "--threshold" in res.stdout


def test_cli_search_dedupe(coll):
    n = len(coll)
    img = coll.root / "img0000.png"
    res = run("search", "-c", coll.path, "-i", img, "-k", n, "--dedupe", "--json")
    ok(res)
    assert len(json.loads(res.stdout)) <= n - len(COPIES)
