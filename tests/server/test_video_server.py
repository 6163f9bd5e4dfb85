"""The server with video frames: search hits carry the video and time, the frame is
served as an image, and the video itself with Range support (for seeking)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("av")

from fastapi.testclient import TestClient  # noqa: E402

from tests.video_helpers import RGB, write_video  # noqa: E402
from vlmsearch import Collection  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402
from vlmsearch.server.app import create_app  # noqa: E402
from vlmsearch.server.config import ServerConfig  # noqa: E402
from vlmsearch.server.video_files import byte_range  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("videos")
    clip = write_video(root / "clip.mp4")
    Image.new("RGB", (40, 30), (200, 200, 200)).save(root / "grey.png")
    opts = IngestOptions(workers=0, video=True)
    c = Collection.index(root, None, encoder=tiny_encoder, options=opts, text_onnx=False)
    app = create_app(ServerConfig(collections={"v": c.path}))
    return TestClient(app, base_url="http://127.0.0.1"), clip.read_bytes(), c


def _blue() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), RGB["blue"]).save(buf, "PNG")
    return buf.getvalue()


def test_search_hit_carries_video_and_time(served) -> None:
    client, _, _ = served
    files = {"image": ("q.png", _blue(), "image/png")}
    res = client.post("/api/collections/v/search/image", files=files, data={"query": "{}"})
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    frames = [h for h in hits if h.get("video_url")]
    assert len(frames) == 1  # one video: its best frame
    best = frames[0]
    assert best["video_path"] == "clip.mp4" and best["timestamp"] == 4.0
    assert best["video_url"] == f"/api/collections/v/videos/{best['id']}"
    query = {"query": json.dumps({"all_frames": True})}
    res = client.post("/api/collections/v/search/image", files=files, data=query)
    assert len([h for h in res.json()["hits"] if h.get("video_url")]) == 3
    # the frame itself, as an image and as a thumbnail
    res = client.get(best["image_url"])
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(res.content)) as im:
        px = im.convert("RGB").getpixel((30, 20))
    assert all(abs(a - b) < 12 for a, b in zip(px, RGB["blue"], strict=True))
    assert client.get(best["thumb_url"]).status_code == 200


def test_video_served_with_ranges(served) -> None:
    client, data, c = served
    ids = {r["path"]: r["id"] for r in c.table.to_pylist()}
    url = f"/api/collections/v/videos/{ids['clip.mp4/t000002.000']}"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"
    part = client.get(url, headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == data[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(data)}"
    tail = client.get(url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == data[-16:]
    past = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    # an image is not a frame; an unknown id is not found
    assert client.get(f"/api/collections/v/videos/{ids['grey.png']}").status_code == 404
    assert client.get("/api/collections/v/videos/99999").status_code == 404


def test_byte_range_rules() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-0", 100) == (0, 0)
    assert byte_range("bytes=90-200", 100) == (90, 99)
    assert byte_range("bytes=-200", 100) == (0, 99)
    assert byte_range("bytes=5-1", 100) is None  # invalid: ignored
    assert byte_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole file
    assert byte_range("items=0-1", 100) is None
    assert byte_range("bytes=100-", 100) == "unsatisfiable"


def test_changed_video_is_refused(served) -> None:
    client, data, c = served
    ids = {r["path"]: r["id"] for r in c.table.to_pylist()}
    clip = Path(c.root) / "clip.mp4"
    st = clip.stat()
    clip.write_bytes(data + b"\0")
    try:
        res = client.get(f"/api/collections/v/videos/{ids['clip.mp4/t000000.000']}")
        assert res.status_code == 409 and "changed" in res.json()["error"]
    finally:
        clip.write_bytes(data)
        os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))
