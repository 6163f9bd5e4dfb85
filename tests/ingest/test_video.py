"""Video files (``--video``): sampled frames indexed as items with their video and
timestamp, cached so an unchanged video is not decoded again."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlmsearch import Collection
from vlmsearch.errors import VlmsearchError
from vlmsearch.ingest.options import IngestOptions

av = pytest.importorskip("av")

from tests.video_helpers import RGB, write_video  # noqa: E402
from vlmsearch.imaging.sources import video  # noqa: E402


def _index(path: Path, encoder, coll: Path | None = None, **kw) -> Collection:
    opts = IngestOptions(workers=0, **kw)
    return Collection.index(path, coll, encoder=encoder, options=opts, text_onnx=False)


def _frames(c: Collection) -> dict[str, dict]:
    return {r["path"]: r for r in c.table.to_pylist()}


def test_sample_times_interval_and_scene_changes(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4")
    # the 2 s interval lands on the cuts; with 5 s the cuts at 2 and 4 s are scene changes
    assert video.sample_times(str(clip)) == [0.0, 2.0, 4.0]
    assert video.sample_times(str(clip), interval=5.0) == [0.0, 2.0, 4.0, 5.0]
    assert video.sample_times(str(clip), interval=1.0) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # a cut between scenes of about the same brightness is seen too
    red_blue = write_video(tmp_path / "rb.mp4", ("red", "blue"))
    assert video.sample_times(str(red_blue), interval=5.0) == [0.0, 2.0]
    # no two kept frames closer than min_gap: the earlier one wins
    assert video.sample_times(str(clip), interval=1.0, min_gap=2.5) == [0.0, 3.0]


def test_frame_read_seeks_to_the_timestamp(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4")
    src = video.Video()
    for t, colour in ((0.0, "red"), (2.0, "green"), (3.3, "green"), (4.0, "blue")):
        data = src.read(str(clip), video.member_name(t), 10**7)
        with Image.open(__import__("io").BytesIO(data)) as im:
            px = im.convert("RGB").getpixel((30, 20))
        assert all(abs(a - b) < 12 for a, b in zip(px, RGB[colour], strict=True)), (t, px)
    with pytest.raises(OSError, match="no frame"):
        src.read(str(clip), "frame1", 10**7)


def test_index_video_frames_and_reindex_without_decoding(
    tmp_path: Path, tiny_encoder, monkeypatch
) -> None:
    folder = tmp_path / "data"
    write_video(folder / "sub" / "clip.mp4")
    # without --video a video is not scanned
    c = _index(folder, tiny_encoder)
    assert c.table.num_rows == 0
    c = _index(folder, tiny_encoder, video=True, video_interval=5.0)
    rows = _frames(c)
    assert sorted(rows) == [f"sub/clip.mp4/{video.member_name(t)}" for t in (0, 2, 4, 5)]
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert sorted(r["timestamp"] for r in rows.values()) == [0.0, 2.0, 4.0, 5.0]
    assert {r["video_path"] for r in rows.values()} == {"sub/clip.mp4"}
    assert c.manifest["sources"] == {"video": True, "video_interval": 5.0}
    # an unchanged video is not decoded again; the manifest keeps --video
    monkeypatch.setattr(video, "sample_times", _no_decoding)
    again = _index(folder, tiny_encoder)
    rep = again.last_report
    assert (rep.new, rep.changed, rep.unchanged, rep.encoded) == (0, 0, 4, 0)
    # a solid blue query image finds the blue segment
    query = tmp_path / "blue.png"
    Image.new("RGB", (64, 48), RGB["blue"]).save(query)
    hits = again.search(image=query, k=4)
    assert 4.0 <= hits[0].extra["timestamp"] <= 5.0
    assert hits[0].extra["video_path"] == "sub/clip.mp4"
    # --no-video: the frames go as deleted, and the manifest says so
    off = _index(folder, tiny_encoder, video=False)
    assert off.table.num_rows == 0 and off.last_report.deleted == 4
    assert off.manifest["sources"]["video"] is False


def _no_decoding(*a, **k):
    raise AssertionError("an unchanged video was decoded again")


def test_damaged_video_is_an_error_line(tmp_path: Path, tiny_encoder) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 10)
    c = _index(folder, tiny_encoder, video=True)
    rep = c.last_report
    assert rep.errors == 1 and rep.error_samples[0][0] == "broken.mp4"
    assert rep.error_samples[0][1].startswith("cannot decode video")
    assert c.table.num_rows == 0


def test_named_video_and_missing_av(tmp_path: Path, tiny_encoder, monkeypatch) -> None:
    clip = write_video(tmp_path / "d" / "clip.mp4", ("red",), seconds=1)
    c = _index(clip, tiny_encoder, tmp_path / "coll")
    assert c.last_report.errors == 1
    assert "--video" in c.last_report.error_samples[0][1]
    c = _index(clip, tiny_encoder, tmp_path / "coll", video=True)
    assert sorted(c.table["video_path"].to_pylist()) == ["clip.mp4"]
    # named with another file: indexed under their common folder, the video's path too
    other = tmp_path / "d2" / "b" / "x.png"
    other.parent.mkdir(parents=True)
    Image.new("RGB", (40, 30), (9, 9, 9)).save(other)
    named = write_video(tmp_path / "d2" / "a" / "clip.mp4", ("red",), seconds=1)
    opts = IngestOptions(workers=0, video=True)
    both = Collection.index([named, other], encoder=tiny_encoder, options=opts, text_onnx=False)
    assert sorted(map(str, both.table["video_path"].to_pylist())) == ["None", "a/clip.mp4"]
    monkeypatch.setitem(__import__("sys").modules, "av", None)
    with pytest.raises(VlmsearchError, match=r"pip install 'vlmsearch\[video\]'"):
        _index(clip, tiny_encoder, tmp_path / "coll")


def test_watch_sees_videos_when_indexed(tmp_path: Path) -> None:
    from vlmsearch.ingest.watch import snapshot
    from vlmsearch.storage.layout import Layout

    write_video(tmp_path / "clip.mp4", ("red",), seconds=1)
    layout = Layout(tmp_path / ".vlmsearch")
    assert {p for p, _, _ in snapshot(tmp_path, layout, IngestOptions(video=True))} == {"clip.mp4"}
    assert not snapshot(tmp_path, layout, IngestOptions())
