"""``Collection.eval_*`` (``vlmsearch eval``): the metrics' arithmetic on constructed cases.

The tiny random model says nothing about quality, so the text encoder is replaced by one
that returns planted vectors: a caption ``id:N`` (or a label ``cN`` in every prompt)
embeds as stored image N's vector, which makes the right answers known exactly."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.errors import QueryError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.search.evaluate.classify_eval import label_of_path
from vlmsearch.search.evaluate.report import rank_summary, ranks_of


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp / "state"))
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        make_images(tmp / "photos", 12)
        opts = IngestOptions(workers=0, index="flat")
        yield Collection.index(tmp / "photos", model=TINY, options=opts, device="cpu")


class Planted:
    """Embeds ``id:N`` (or any text holding the label ``cN``) as stored image N's vector;
    other texts as the first image's."""

    def __init__(self, coll):
        self.coll = coll

    def encode_texts(self, texts):
        out = []
        for t in texts:
            m = re.search(r"(?:id:|\bc)(\d+)", t)
            n = int(m.group(1)) if m else int(self.coll.vectors.ids[0])  # any other text
            out.append(self.coll.vectors.dense(np.asarray([n]))[0])
        return np.asarray(out, np.float32)


@pytest.fixture
def planted(coll, monkeypatch):
    monkeypatch.setattr(coll._encoders, "text", lambda: Planted(coll))
    return coll


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _paths(coll):
    return {i: r["path"] for i, r in coll.rows(coll.vectors.ids).items()}


def test_rank_arithmetic():
    s = rank_summary(np.array([1, 2, 6, 20]))
    assert s == {"queries": 4, "R@1": 0.25, "R@5": 0.5, "R@10": 0.75, "median_rank": 4.0}
    scores = np.array([[0.9, 0.5, 0.7], [0.1, 0.2, 0.3]])
    assert ranks_of(scores, scores[[0, 1], [0, 0]]).tolist() == [1, 3]


def test_captions_that_are_the_images_rank_first(planted, tmp_path):
    paths = _paths(planted)
    ids = list(paths)
    f = tmp_path / "caps.csv"
    rows = ["path,caption"] + [f"{paths[i]},id:{i}" for i in ids]
    rows.append(f"{planted.root / paths[ids[0]]},id:{ids[0]}")  # absolute, a second caption
    rows.append("nope.png,id:0")
    f.write_text("\n".join(rows) + "\n")
    r = planted.eval_retrieval(f)
    m = r.metrics
    assert (m["captions"], m["images"], m["gallery"], m["unmatched"]) == (13, 12, 12, 1)
    for side in ("text_to_image", "image_to_text"):
        assert m[side]["R@1"] == 1.0 and m[side]["median_rank"] == 1.0
    assert "nope.png" in r.notes[0] and r.misses["text to image"] == []


def test_a_wrong_caption_ranks_where_the_scores_say(planted, tmp_path):
    paths = _paths(planted)
    ids = list(paths)
    a, b = ids[0], ids[1]
    f = tmp_path / "caps.jsonl"
    lines = [f'{{"path": "{paths[a]}", "caption": "id:{b}"}}']  # image a, b's vector
    lines += [f'{{"path": "{paths[i]}", "caption": "id:{i}"}}' for i in ids[2:6]]
    f.write_text("\n".join(lines) + "\n")
    r = planted.eval_retrieval(f)
    v = _unit(planted.vectors.dense(np.asarray(ids)))
    s = v @ v[1]  # the wrong caption against every image
    expected = int(1 + (s > s[0]).sum())
    assert expected > 1
    t2i = r.metrics["text_to_image"]
    assert t2i["R@1"] == 4 / 5
    assert t2i["median_rank"] == 1.0
    miss = r.misses["text to image"][0]
    assert (miss.id, miss.rank, miss.text) == (a, expected, f"id:{b}")
    assert miss.path.endswith(paths[a]) and miss.got == paths[b]
    # image a among the five captions: b's vector is one of them, its own the only right one
    caps = _unit(planted.vectors.dense(np.asarray([b, *ids[2:6]])))
    sa = caps @ v[0]
    assert r.metrics["image_to_text"]["R@1"] == 0.8
    assert r.misses["image to text"][0].rank == int(1 + (sa > sa[0]).sum())


@pytest.mark.parametrize(
    "content, suffix, needle",
    [
        (None, ".csv", "no such file"),
        ("path,text\na.png,x\n", ".csv", "no caption column"),
        ("file,text\na.png,x\n", ".csv", "no path or caption column"),
        ("path,caption\nelsewhere.png,x\n", ".csv", "none of the paths"),
        ("path,caption\n", ".csv", "no row with both"),
        ("path,caption\na,b\n", ".txt", ".csv, .parquet or .jsonl"),
    ],
)
def test_captions_file_errors(coll, tmp_path, content, suffix, needle):
    f = tmp_path / f"caps{suffix}"
    if content is not None:
        f.write_text(content)
    coll._encoders.loaded = None
    with pytest.raises(QueryError, match=re.escape(needle)):
        coll.eval_retrieval(f)
    assert coll._encoder is None  # refused before the model was built


def _label_column(coll, labels):
    coll._write_text_column("truth", labels, {"by": "test"})


def test_classify_accuracy_with_planted_label_vectors(planted):
    ids = planted.vectors.ids.tolist()[:6]
    labels = {i: f"c{i}" for i in ids[:5]}
    labels[ids[5]] = f"c{ids[4]}"  # two images of class c4; c5 is no class
    _label_column(planted, labels)
    r = planted.eval_classify(labels_from="truth", templates="simple")
    m = r.metrics
    assert (m["images"], m["unlabelled"], m["classes"]) == (6, 6, 5)
    v = _unit(planted.vectors.dense(np.asarray(ids)))
    s = v[5] @ v[:5].T  # image 5 against the five class vectors
    rank5 = int(1 + (s > s[4]).sum())
    assert m["top1"] == pytest.approx((5 + (rank5 == 1)) / 6)
    assert m["top5"] == 1.0
    if rank5 > 1:
        got = f"c{ids[int(s.argmax())]}"
        assert m["confused"] == [{"true": f"c{ids[4]}", "predicted": got, "count": 1}]
        assert r.misses["misclassified"][0].text == f"c{ids[4]} -> {got}"


def test_labels_from_path(planted):
    assert label_of_path(re.compile(r"_([a-z_ ]+)\."), "n01_great_white_shark.JPEG") == (
        "great white shark"
    )
    assert label_of_path(re.compile(r"img\d+"), "a/img0003.png") == "img0003"
    r = planted.eval_classify(labels_from_path=r"img000(\d)", templates="simple")
    assert (r.metrics["images"], r.metrics["classes"]) == (10, 10)  # img0000 .. img0009
    r = planted.eval_classify(labels_from="width", templates="simple")  # any column, as text
    assert (r.metrics["images"], r.metrics["classes"]) == (12, 7)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({}, "give one of"),
        ({"labels_from": "a", "labels_from_path": "b"}, "give one of"),
        ({"labels_from_path": "img(("}, "not a valid regex"),
        ({"labels_from_path": r"zebra_(\w+)"}, "the regex matched no path"),
        ({"labels_from": "no_such"}, "no column 'no_such'"),
    ],
)
def test_classify_errors(coll, kwargs, needle):
    with pytest.raises(QueryError, match=re.escape(needle)):
        coll.eval_classify(**kwargs)


def test_flat_index_recall_is_one(coll):
    r = coll.eval_index(queries=5, k=4, seed=1)
    m = r.metrics
    assert m["index"] == "Flat" or "flat" in m["index"].lower()
    assert (m["queries"], m["k"], m["recall@4"], m["min_recall"]) == (5, 4, 1.0, 1.0)
    assert 0 <= m["p50_ms"] <= m["p95_ms"]
    assert r.misses["queries with the lowest recall"] == []
    assert coll.eval_index(queries=500, k=50).metrics["queries"] == 12  # capped at n and n-1
    with pytest.raises(QueryError, match="at least 1"):
        coll.eval_index(queries=0)


def test_index_misses_are_counted_and_named(coll, monkeypatch):
    from vlmsearch.search.evaluate import index_eval

    real = index_eval._ann
    monkeypatch.setattr(index_eval, "_ann", lambda *a: real(*a)[:-1])  # one of k short
    r = coll.eval_index(queries=4, k=3)
    assert r.metrics["recall@3"] == pytest.approx(2 / 3)
    miss = r.misses["queries with the lowest recall"][0]
    assert miss.text == "1 of the exact top 3 missed" and miss.path.endswith(".png")
