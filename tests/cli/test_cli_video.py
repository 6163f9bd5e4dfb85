"""``index --video`` and ``search --all-frames`` from the command line."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from tests.cli_helpers import ok, one_line_error, run
from tests.conftest import TINY

pytest.importorskip("av")

from tests.video_helpers import RGB, write_video  # noqa: E402


def test_index_video_and_search_best_frame(tmp_path) -> None:
    folder = tmp_path / "clips"
    write_video(folder / "clip.mp4")
    coll = tmp_path / "coll"
    res = run("index", folder, "-c", coll, "-m", TINY, "--workers", 0, "--video", "--json")
    ok(res)
    assert json.loads(res.stdout)["encoded"] == 3  # 0, 2 and 4 s
    query = tmp_path / "blue.png"
    Image.new("RGB", (64, 48), RGB["blue"]).save(query)
    res = run("search", "--image", query, "-c", coll, "--json")
    ok(res)
    hits = json.loads(res.stdout)
    assert len(hits) == 1  # one video: its best frame
    assert hits[0]["video_path"] == "clip.mp4" and hits[0]["timestamp"] == 4.0
    res = run("search", "--image", query, "-c", coll, "--all-frames", "--json")
    ok(res)
    assert sorted(h["timestamp"] for h in json.loads(res.stdout)) == [0.0, 2.0, 4.0]
    res = run("search", "--image", query, "-c", coll)
    ok(res)
    assert "clip.mp4 @ 0:04.0" in res.stdout


def test_video_errors(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    res = run("index", folder, "-m", TINY, "--video", "--video-interval", 0)
    assert res.exit_code == 2 and "--video-interval" in res.output
    monkeypatch.setitem(sys.modules, "av", None)
    res = run("index", folder, "-m", "no/such-model", "--video")
    one_line_error(res, "pip install 'vlmsearch[video]'")


def test_video_interval_without_video_is_refused(tmp_path) -> None:
    folder = tmp_path / "clips"
    write_video(folder / "clip.mp4")
    coll = tmp_path / "coll"
    one_line_error(run("index", folder, "-c", coll, "-m", TINY, "--video-interval", 3), "--video")
    assert not (coll / "manifest.json").exists()  # refused before any work
    ok(run("index", folder, "-c", coll, "-m", TINY, "--workers", 0, "--video", "-q"))
    # the collection remembers --video, so a new interval alone is fine
    res = run("index", folder, "-c", coll, "-m", TINY, "--workers", 0, "--video-interval", 1)
    ok(res)
    assert "--video-interval" not in res.output
