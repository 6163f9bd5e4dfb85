"""``vlmsearch duplicates`` reports: ``--html`` never overwrites an image or a file in the
indexed folder, the page embeds thumbnails (members of a webdataset tar and video frames
too, which no ``file:`` URL can show), and the summary's counts read right."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.cli_helpers import ok, one_line_error, run
from tests.conftest import TINY
from tests.ingest.datasets import image_bytes, write_tar

THRESHOLD = "0.99999"  # exact copies only (the tiny random model puts drawings close)


@pytest.fixture(scope="module")
def shard_coll(tmp_path_factory) -> Path:
    """A folder holding one webdataset tar: a.png and its copy b.png, and a distinct c.png."""
    tmp = tmp_path_factory.mktemp("dupreport")
    root = tmp / "data"
    a = image_bytes(0, tmp)
    write_tar(root / "shard.tar", {"a.png": a, "b.png": a, "c.png": image_bytes(3, tmp)})
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "00.jpg")
    res = run("index", root, "-m", TINY, "--workers", 0, "-q")
    assert res.exit_code == 0, res.output
    return root / ".vlmsearch"


def _group_ids(coll: Path) -> list[int]:
    res = run("duplicates", "-c", coll, "--threshold", THRESHOLD, "--json")
    ok(res)
    groups = json.loads(res.stdout)
    assert len(groups) == 1
    return [groups[0]["keeper"]["id"]] + [o["id"] for o in groups[0]["others"]]


@pytest.mark.parametrize("inside", [True, False])
def test_html_onto_an_image_is_one_line_and_the_image_stays(
    shard_coll: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inside: bool
) -> None:
    import vlmsearch.collection as collection_mod

    def no_work(*a, **k):
        raise AssertionError("the command worked before checking its output path")

    monkeypatch.setattr(collection_mod.Collection, "duplicates", no_work)
    image = shard_coll.parent / "00.jpg"
    if not inside:
        image = Path(shutil.copyfile(image, tmp_path / "photo.jpg"))
    before = image.read_bytes()
    res = run("duplicates", "-c", shard_coll, "--html", image)
    one_line_error(res, "--html", "refusing to overwrite")
    assert image.read_bytes() == before


def test_html_onto_a_page_inside_the_indexed_folder_is_refused(
    shard_coll: Path, tmp_path: Path
) -> None:
    page = shard_coll.parent / "notes.html"
    page.write_text("mine")
    try:
        res = run("duplicates", "-c", shard_coll, "--html", page)
        one_line_error(res, "--html", "inside the indexed folder")
        res = run("search", "red", "-c", shard_coll, "--html", page)
        one_line_error(res, "--html", "inside the indexed folder")
        assert page.read_text() == "mine"
    finally:
        page.unlink()
    other = tmp_path / "old.html"  # a page elsewhere is replaced, as before
    other.write_text("old")
    ok(run("duplicates", "-c", shard_coll, "--threshold", THRESHOLD, "--html", other))
    assert other.read_text() != "old"


def test_html_embeds_thumbnails_of_container_members(shard_coll: Path, tmp_path: Path) -> None:
    assert len(_group_ids(shard_coll)) == 2
    page = tmp_path / "d.html"
    res = run("duplicates", "-c", shard_coll, "--threshold", THRESHOLD, "--html", page)
    ok(res)
    text = page.read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]*)"', text)
    assert len(srcs) == 2 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert "file:" not in text  # members are no files: nothing to link
    assert "shard.tar/a.png" in text and "shard.tar/b.png" in text
    assert "1 group, 1 image could go" in text
    assert "image unavailable" not in text


def test_summary_counts_read_right(shard_coll: Path) -> None:
    res = run("duplicates", "-c", shard_coll, "--threshold", THRESHOLD)
    ok(res)
    assert "1 group, 1 image could go" in res.stderr
    from vlmsearch.cli.duplicates import summary
    from vlmsearch.search.duplicates import Group

    groups = [Group(1, [2, 3], [1.0, 1.0]), Group(4, [5], [1.0])]
    assert summary(groups) == "2 groups, 3 images could go"
    assert summary(groups[1:]) == "1 group, 1 image could go"


def test_video_frames_read_as_times_and_embed_thumbnails(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from tests.video_helpers import write_video

    folder = tmp_path / "clips"
    write_video(folder / "rgb.mp4", ("red", "red", "red"))  # frames at 0, 2 and 4 s alike
    coll = tmp_path / "coll"
    ok(run("index", folder, "-c", coll, "-m", TINY, "--workers", 0, "--video", "-q"))
    res = run("duplicates", "-c", coll, "--threshold", "0.99")
    ok(res)
    assert "rgb.mp4 @ 0:04.0" in res.stdout
    assert "rgb.mp4/t" not in res.stdout
    page = tmp_path / "v.html"
    ok(run("duplicates", "-c", coll, "--threshold", "0.99", "--html", page))
    text = page.read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]*)"', text)
    assert len(srcs) == 3 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert "file:" not in text and "rgb.mp4 @ 0:02.0" in text
