"""``vlmsearch eval``: the --json shape, the --html page, and one-line errors before any
model is built (the figures themselves: tests/search/test_eval.py)."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import ok, one_line_error, run
from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalcli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp / "state"))
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        make_images(tmp / "photos", 8, prefix="x_red_")
        make_images(tmp / "photos", 8, prefix="x_blue_")
        opts = IngestOptions(workers=0, index="flat")
        c = Collection.index(tmp / "photos", model=TINY, options=opts, device="cpu")
        yield c


@pytest.fixture
def captions(coll, tmp_path):
    f = tmp_path / "caps.csv"
    rows = [f"{r['path']},a {r['path'].split('_')[1]} square" for r in coll.table.to_pylist()]
    f.write_text("path,caption\n" + "\n".join(rows + ["gone.png,x"]) + "\n")
    return f


def test_retrieval_json_and_html(coll, captions, tmp_path):
    page = tmp_path / "report.html"
    res = run("eval", "retrieval", "-c", coll.path, "--captions", captions, "--json",
              "--html", page)  # fmt: skip
    ok(res)
    out = json.loads(res.stdout)
    assert out["kind"] == "retrieval" and out["captions"] == 16 and out["unmatched"] == 1
    for side in ("text_to_image", "image_to_text"):
        assert set(out[side]) == {"queries", "R@1", "R@5", "R@10", "median_rank"}
    assert set(out["worst"]) == {"text to image", "image to text"}
    assert "gone.png" in out["notes"][0]
    html = page.read_text()
    assert "worst misses" in html and html.count("<h2>") == 2
    assert html.count("data:image/jpeg") == sum(len(v) for v in out["worst"].values())


def test_classify_and_index_json(coll):
    res = run("eval", "classify", "-c", coll.path, "--labels-from-path", r"x_([a-z]+)_",
              "--templates", "simple", "--json")  # fmt: skip
    ok(res)
    out = json.loads(res.stdout)
    assert (out["kind"], out["images"], out["classes"]) == ("classify", 16, 2)
    assert 0 <= out["top1"] <= out["top5"] == 1.0  # two classes: always in the top 5
    res = run("eval", "index", "-c", coll.path, "--queries", 5, "--json")
    ok(res)
    out = json.loads(res.stdout)
    assert out["recall@10"] == 1.0 and out["queries"] == 5 and out["p95_ms"] >= out["p50_ms"]


def test_table_output(coll):
    res = run("eval", "index", "-c", coll.path, "--queries", 3)
    ok(res)
    assert "recall@10" in res.stdout and "1.000" in res.stdout
    res = run("eval", "classify", "-c", coll.path, "--labels-from-path", r"x_([a-z]+)_",
              "--templates", "simple")  # fmt: skip
    ok(res)
    assert "top1" in res.stdout and "confused" in res.stdout
    from vlmsearch.cli.eval import _cell

    pairs = [{"true": "red", "predicted": "blue", "count": 3}]
    assert _cell(pairs) == "red -> blue (3)"
    assert _cell([{"label": "red", "top1": 0.25, "images": 8}]) == "red 0.250 (8)"
    assert _cell({"R@1": 0.5, "median_rank": 2.0}) == "R@1 0.500  median_rank 2.000"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["retrieval", "--captions", "missing.csv"], "no such file"),
        (["classify", "--labels-from-path", "x(("], "not a valid regex"),
        (["classify", "--labels-from-path", "zebra_(.)"], "matched no path"),
        (["classify", "--labels-from", "nope"], "no column 'nope'"),
        (["classify"], "give one of"),
        (["classify", "--labels-from", "width", "--rule", "max"], "--rule"),
    ],
)
def test_one_line_errors(coll, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    one_line_error(run("eval", *args, "-c", coll.path), needle)


def test_no_caption_column(coll, tmp_path):
    f = tmp_path / "caps.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["a.png"], "text": ["x"]}), f)
    res = run("eval", "retrieval", "-c", coll.path, "--captions", f)
    one_line_error(res, "no caption column", "has: path, text")


def test_html_refuses_an_image(coll, tmp_path):
    image = make_images(tmp_path, 1)[0]
    before = image.read_bytes()
    res = run("eval", "index", "-c", coll.path, "--html", image)
    one_line_error(res, "not a page")
    assert image.read_bytes() == before
