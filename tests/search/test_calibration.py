"""Calibrated scores (``search/calibration.py``): the Platt fit, which calibration applies,
and ``eval retrieval --calibrate`` storing one that text searches then use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY, make_images
from tests.search.test_eval import Planted, _paths
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.results import Hit
from vlmsearch.search import calibration


def _sample(rng, n_pos, n_neg):
    """Scores of matches ~ N(0.6, 0.1) and of non-matches ~ N(0.2, 0.1)."""
    x = np.concatenate([rng.normal(0.6, 0.1, n_pos), rng.normal(0.2, 0.1, n_neg)])
    y = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    return x, y


def test_platt_fit_matches_the_likelihood_ratio_at_the_prior():
    """Two Gaussians of equal spread: the exact log-odds at prior pi is
    (m1 - m0) / s^2 * x + (m0^2 - m1^2) / (2 s^2) + log(pi / (1 - pi))."""
    x, y = _sample(np.random.default_rng(0), 20000, 80000)
    a, b = calibration.fit_platt(x, y)
    want_a = (0.6 - 0.2) / 0.01
    want_b = (0.2**2 - 0.6**2) / (2 * 0.01) + np.log(calibration.PRIOR / (1 - calibration.PRIOR))
    assert a == pytest.approx(want_a, rel=0.05)
    assert b == pytest.approx(want_b, abs=0.6)


def test_the_fit_does_not_depend_on_the_share_of_matches_in_the_data():
    rng = np.random.default_rng(1)
    few = calibration.fit_platt(*_sample(rng, 2000, 50000))
    many = calibration.fit_platt(*_sample(rng, 20000, 20000))
    assert few == pytest.approx(many, rel=0.1, abs=0.5)


def test_fit_needs_both_kinds_of_pairs():
    with pytest.raises(ValueError, match="both"):
        calibration.fit_platt(np.array([0.1, 0.2]), np.array([True, True]))


def test_quality_of_a_perfect_and_of_a_useless_cut():
    y = np.array([True, True, False, False])
    good = calibration.quality(np.array([0.9, 0.8, 0.1, 0.2]), y)
    assert good["precision_at_0.5"] == 1.0 and good["recall_at_0.5"] == 1.0
    bad = calibration.quality(np.array([0.1, 0.2, 0.9, 0.8]), y)
    assert bad["precision_at_0.5"] == 0.0 and bad["recall_at_0.5"] == 0.0
    assert bad["ece"] > good["ece"]


def test_calibrated_hits_keep_their_order_and_their_raw_score():
    hits = [
        Hit(rank=i + 1, score=s, id=i, path="p", relpath="p") for i, s in enumerate((0.5, 0.3, 0.1))
    ]
    cal = {"method": "platt", "a": 10.0, "b": -3.0}
    out = calibration.calibrate_hits(hits, cal)
    assert [h.extra["raw_score"] for h in out] == [0.5, 0.3, 0.1]
    assert [h.score for h in out] == pytest.approx(
        1 / (1 + np.exp(-(10 * np.array([0.5, 0.3, 0.1]) - 3)))
    )
    assert [h.id for h in out] == [0, 1, 2]
    assert calibration.calibrate_hits(hits, None) is hits
    with pytest.raises(ValueError, match="unknown calibration"):
        calibration.apply(0.5, {"method": "isotonic"})


def test_which_calibration_applies():
    enc = {"kind": "k", "sha256": "abc", "calibration": {"method": "platt", "a": 1.0, "b": 0.0}}
    own = {"method": "platt", "a": 2.0, "b": 0.0, "encoder": calibration.encoder_key(enc)}
    assert calibration.active({"encoder": enc})["a"] == 1.0
    assert calibration.active({"encoder": enc, "calibration": own})["a"] == 2.0
    stale = {**own, "encoder": calibration.encoder_key({**enc, "sha256": "old"})}  # replaced
    assert calibration.active({"encoder": enc, "calibration": stale})["a"] == 1.0
    assert calibration.active({"encoder": {"sha256": "abc"}}) is None


@pytest.fixture
def coll(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_images(tmp_path / "photos", 12)
    opts = IngestOptions(workers=0, index="flat")
    return Collection.index(tmp_path / "photos", model=TINY, options=opts, device="cpu")


def test_eval_calibrate_stores_a_calibration_that_text_search_uses(coll, tmp_path, monkeypatch):
    monkeypatch.setattr(coll._encoders, "text", lambda: Planted(coll))
    paths = _paths(coll)
    f = tmp_path / "caps.csv"
    f.write_text("path,caption\n" + "".join(f"{p},id:{i}\n" for i, p in paths.items()))
    raw_before = Collection.open(coll.path).search("a photo", k=3)  # the real text encoder
    assert all("raw_score" not in h.extra for h in raw_before)  # a CLIP model: uncalibrated

    report = coll.eval_retrieval(f, calibrate=True)
    cal = report.metrics["calibration"]
    assert cal["method"] == "platt" and cal["a"] > 0  # higher similarity, likelier match
    assert cal["encoder"] == calibration.encoder_key(coll.manifest["encoder"])
    assert cal["fitted_on"]["queries"] == 12 and cal["held_out"]["held_out_captions"] == 6
    stored = json.loads((coll.path / "manifest.json").read_text())["calibration"]
    assert stored == cal  # committed, not only in this process

    again = Collection.open(coll.path)
    hits = again.search("a photo", k=3)
    for h, r in zip(hits, raw_before, strict=True):
        assert h.id == r.id and h.extra["raw_score"] == pytest.approx(r.score)
        assert h.score == pytest.approx(float(calibration.apply(r.score, cal)))
    cut = float(np.mean([h.score for h in hits[:2]]))
    kept = again.search("a photo", k=3, min_score=cut)
    assert [h.id for h in kept] == [h.id for h in hits if h.score >= cut]
    # an image query is not a text query: its score stays the raw similarity
    image_hits = again.search(image=coll.root / paths[next(iter(paths))], k=2)
    assert all("raw_score" not in h.extra for h in image_hits)


def test_info_says_what_a_score_is():
    from vlmsearch.cli.info import _scores_line

    enc = {"kind": "k", "sha256": "abc"}
    assert _scores_line(enc, None).startswith("raw similarity")
    shipped = {**enc, "calibration": {"method": "platt", "a": 2.0, "b": -1.0, "fitted_on": "x"}}
    assert "shipped with the model" in _scores_line(shipped, None)
    own = {"method": "platt", "a": 3.0, "b": -1.0, "encoder": calibration.encoder_key(enc)}
    own["fitted_on"] = {"captions": "caps.csv"}
    assert "fitted on caps.csv" in _scores_line(shipped, own)


def test_calibrate_refuses_too_few_captions(coll, tmp_path):
    from vlmsearch.errors import QueryError

    paths = _paths(coll)
    f = tmp_path / "few.csv"
    f.write_text("path,caption\n" + "".join(f"{p},id:{i}\n" for i, p in list(paths.items())[:3]))
    with pytest.raises(QueryError, match="at least 10 captions"):
        coll.eval_retrieval(f, calibrate=True)
    assert "calibration" not in json.loads((coll.path / "manifest.json").read_text())
