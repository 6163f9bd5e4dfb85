"""The server shows HEIC and camera RAW, which browsers cannot: thumbnails and the
full-size view are JPEGs it makes (and caches)."""

from __future__ import annotations

import importlib.util
import io
import json

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from tests.imaging.dng import make_dng  # noqa: E402
from tests.imaging.test_formats import heic_bytes, jpeg_bytes  # noqa: E402
from vlmsearch import Collection  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402
from vlmsearch.server.app import create_app  # noqa: E402
from vlmsearch.server.config import ServerConfig  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("formats") / "photos"
    root.mkdir()
    (root / "plain.jpg").write_bytes(jpeg_bytes())
    if importlib.util.find_spec("pillow_heif"):
        (root / "phone.heic").write_bytes(heic_bytes(orientation=6))
    if importlib.util.find_spec("rawpy"):
        (root / "camera.dng").write_bytes(make_dng(orientation=6))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(root.parent / "state"))
        coll = Collection.index(root, encoder=tiny_encoder, options=IngestOptions(workers=0))
    ids = {r["path"]: r["id"] for r in coll.table.to_pylist()}
    app = create_app(ServerConfig(collections={"photos": root / ".vlmsearch"}))
    return TestClient(app, base_url="http://127.0.0.1"), ids, root / ".vlmsearch"


def _jpeg(res) -> Image.Image:
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(res.content))
    assert img.format == "JPEG"
    return img


@pytest.mark.parametrize(("path", "size"), [("phone.heic", (48, 64)), ("camera.dng", (24, 32))])
def test_thumbnail_and_full_view_are_jpeg(served, path, size):
    client, ids, coll = served
    if path not in ids:
        pytest.skip(f"{path}: the formats extra is not installed")
    i = ids[path]
    assert _jpeg(client.get(f"/api/collections/photos/thumbs/{i}")).size == size
    full = client.get(f"/api/collections/photos/images/{i}")
    assert _jpeg(full).size == size  # upright, full size (below the 4096 cap)
    assert list((coll / "thumbs").rglob(f"thumb-{i}-4096-*.jpg"))  # cached like a thumbnail


def test_browser_formats_sent_as_they_are(served):
    client, ids, _ = served
    res = client.get(f"/api/collections/photos/images/{ids['plain.jpg']}")
    assert res.status_code == 200 and res.content == jpeg_bytes()


@pytest.mark.parametrize("path", ["phone.heic", "camera.dng"])
def test_uploaded_query_in_these_formats(served, path):
    client, ids, coll = served
    if path not in ids:
        pytest.skip(f"{path}: the formats extra is not installed")
    data = (coll.parent / path).read_bytes()
    res = client.post(
        "/api/collections/photos/search/image",
        files=[("image", (path, data, "application/octet-stream"))],
        data={"query": json.dumps({"k": 3})},
    )
    assert res.status_code == 200, res.text
    assert res.json()["hits"][0]["id"] == ids[path]
