"""`vlmsearch serve`: the API against a tiny collection, and every bad-input case of issue 7."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import make_images  # noqa: E402
from tests.serve_helpers import build_collection, live_server  # noqa: E402
from vlmsearch import Collection  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402
from vlmsearch.server.app import create_app  # noqa: E402
from vlmsearch.server.config import ServerConfig  # noqa: E402

LIMIT = 256 * 1024  # the test server's body limit


@pytest.fixture(scope="module")
def coll_path(tmp_path_factory, tiny_encoder):
    return build_collection(tmp_path_factory.mktemp("serve") / "photos", tiny_encoder)


@pytest.fixture(scope="module")
def app(coll_path):
    return create_app(ServerConfig(collections={"photos": coll_path}, max_upload_bytes=LIMIT))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def png(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def assert_error(res, status: int, needle: str = "") -> None:
    assert res.status_code == status, res.text
    body = res.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    assert needle.lower() in body["error"].lower(), body["error"]
    assert "Traceback" not in res.text


def still_serving(client) -> None:
    res = client.post("/api/collections/photos/search", json={"text": "a square", "k": 2})
    assert res.status_code == 200 and len(res.json()["hits"]) == 2


# -- the API ---------------------------------------------------------------------------------


def test_text_search(client):
    res = client.post("/api/collections/photos/search", json={"text": "a red square", "k": 3})
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all({"id", "score", "relpath", "thumb_url", "image_url"} <= set(h) for h in hits)
    assert all("path" not in h for h in hits)  # no server paths
    # the same query through the Python API: the server adds nothing of its own
    coll = Collection.open(client.app.state.ctx.registry.get("photos").layout.path)
    assert [h["id"] for h in hits] == [h.id for h in coll.search("a red square", k=3)]
    res = client.post(
        "/api/collections/photos/search",
        json={"text": ["2:a red square", "a blue one"], "negative": "green", "k": 50,
              "where": "width >= 44"},
    )  # fmt: skip
    assert res.status_code == 200 and res.json()["hits"]
    assert all(h["width"] >= 44 for h in res.json()["hits"])


def test_upload_search_with_weights_and_negatives(client):
    files = [("image", ("a.png", png(), "image/png")), ("image", ("b.png", png(), "image/png"))]
    files.append(("negative_image", ("n.png", png(colour=(0, 0, 255)), "image/png")))
    query = {"text": "red", "k": 4, "image_weights": [2, 0.5], "negative_image_weights": [1]}
    res = client.post(
        "/api/collections/photos/search/image", files=files, data={"query": json.dumps(query)}
    )
    assert res.status_code == 200, res.text
    assert len(res.json()["hits"]) == 4
    res = client.post(
        "/api/collections/photos/search/image",
        files=files[:1],
        data={"query": json.dumps({"image_weights": [1, 2]})},
    )
    assert_error(res, 400, "2 weights for 1 images")


def test_more_like_this_classify_caption(client):
    res = client.get("/api/collections/photos/similar/3?k=4")
    assert res.status_code == 200, res.text
    ids = [h["id"] for h in res.json()["hits"]]
    assert len(ids) == 4 and 3 not in ids
    res = client.post("/api/collections/photos/classify", json={"labels": ["red", "blue"]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["total"] == 12 and sum(body["counts"].values()) == 12
    assert_error(client.post("/api/collections/photos/caption/3"), 503, "--lm")
    assert_error(client.post("/api/collections/photos/caption/999"), 404, "no indexed image")


def test_rerank_region_boxes_and_allowlist(client):
    res = client.post(
        "/api/collections/photos/search",
        json={"text": "a square", "k": 3, "rerank": "region", "rerank_top": 3},
    )
    assert res.status_code == 200, res.text
    hit = res.json()["hits"][0]
    assert hit["reranker"].startswith("region") and len(hit["box"]) == 4
    # a reranker that names a model path is a client-supplied path: refused
    res = client.post(
        "/api/collections/photos/search",
        json={"text": "x", "rerank": "coca:coca_ViT-B-32:/etc/passwd"},
    )
    assert_error(res, 400, "not enabled")


def test_images_and_thumbnails_by_id(client, coll_path):
    res = client.get("/api/collections/photos/images/0")
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(res.content)).size[0] > 0
    res = client.get("/api/collections/photos/thumbs/0")
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    cached = list((coll_path / "thumbs").rglob("thumb-0-*.jpg"))
    assert len(cached) == 1
    assert client.get("/api/collections/photos/thumbs/0").content == res.content  # from cache
    # a file changed since indexing is not served (409) until it is indexed again; see
    # tests/test_server_security.py for the new thumbnail made after that
    row = Collection.open(coll_path).rows([1])[1]
    src = coll_path.parent / row["path"]
    original = src.read_bytes()
    Image.new("RGB", (60, 20), (0, 0, 0)).save(src)
    assert_error(client.get("/api/collections/photos/thumbs/1"), 409, "changed")
    src.write_bytes(original)
    os.utime(src, ns=(row["mtime_ns"], row["mtime_ns"]))
    assert client.get("/api/collections/photos/thumbs/1").status_code == 200
    assert_error(client.get("/api/collections/photos/thumbs/999"), 404, "no indexed image")


def test_info_health_metrics_openapi(client):
    info = client.get("/api/collections/photos").json()
    assert info["images"] == 12 and "width" in info["columns"]
    assert info["columns"]["format"]["values"] == ["PNG"]
    assert "root" not in info["info"] and "collection" not in info["info"]
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["collections"]["photos"]["images"] == 12
    text = client.get("/metrics").text
    assert "vlmsearch_http_requests_total" in text and 'route="/api/health"' in text
    assert 'vlmsearch_collection_images{name="photos"} 12.0' in text
    assert "/api/collections/{name}/search" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


# -- bad input: paths ------------------------------------------------------------------------

TRAVERSALS = [
    "/api/collections/photos/images/../../../../etc/passwd",
    "/api/collections/photos/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/collections/photos/images/%2Fetc%2Fpasswd",
    "/api/collections/photos/images/%252e%252e%252fetc%252fpasswd",
    "/api/collections/photos/thumbs/..%5C..%5Cetc%5Cpasswd",
    "/api/collections/photos/images/0%2F..%2F..%2Fetc%2Fpasswd",
    "/api/collections/..%2F..%2Fetc/images/0",
    "/api/collections/%2Fetc%2Fpasswd/thumbs/0",
    "/api/collections/photos/images/-1",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/static/index.html/../../../../../etc/passwd",
    "/static/__init__.py",
    "/..%2F..%2Fetc%2Fpasswd",
    "/api/collections/photos/similar/..%2F1",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_refused(client, url):
    res = client.get(url)
    assert res.status_code in (404, 405, 422), (url, res.status_code)
    assert "root:" not in res.text and "import" not in res.text
    assert res.headers["content-type"].startswith("application/json")


def test_path_like_parameters_are_refused(client):
    cases = [
        ({"text": "x", "text_column": "../../etc/passwd"}, 400, "no text column"),
        ({"text": "x", "rerank": "region", "rerank_options": {"boxes": "/etc/passwd"}}, 422, ""),
        ({"image": "/etc/passwd", "k": 1}, 422, "image"),
    ]
    for body, status, needle in cases:
        assert_error(client.post("/api/collections/photos/search", json=body), status, needle)
    res = client.post(
        "/api/collections/photos/classify", json={"labels": ["a", "b"], "templates": "/etc/passwd"}
    )
    assert_error(res, 422, "templates")


# -- bad input: uploads ----------------------------------------------------------------------


def test_oversized_upload_is_413(client):
    big = b"\0" * (LIMIT + 1)
    res = client.post(
        "/api/collections/photos/search/image", files=[("image", ("big.png", big, "image/png"))]
    )
    assert_error(res, 413, "limit")
    still_serving(client)


def _raw_request(base: str, head: bytes, body_chunks=()) -> tuple[bytes, int]:
    """Send a request by hand; returns (response head, body bytes sent before the answer)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        sent = 0
        s.setblocking(False)
        for chunk in body_chunks:
            try:
                got = s.recv(4096)
            except BlockingIOError:
                got = b""
            if got:
                return got, sent
            try:
                s.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        s.setblocking(True)
        return s.recv(4096), sent


def test_oversized_upload_refused_before_read_whole(app):
    with live_server(app) as base:
        # Content-Length over the limit: refused from the headers, no body sent at all
        head = (
            b"POST /api/collections/photos/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        answer, sent = _raw_request(base, head)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        # chunked, no length: refused once the stream passes the limit, not at its end
        head = head.replace(b"Content-Length: 10000000000", b"Transfer-Encoding: chunked")
        part = (
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        chunks = [part] + [b"x" * 64 * 1024] * 1000  # 64 MB offered
        framed = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks]
        answer, sent = _raw_request(base, head, framed)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert sent < 16 * 2**20


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_decompression_bombs_are_4xx(client):
    # a header claiming 100k x 100k pixels with almost no data behind it
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
    fake = b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    fake += _png_chunk(b"IEND", b"")
    res = client.post(
        "/api/collections/photos/search/image", files=[("image", ("bomb.png", fake, "image/png"))]
    )
    assert_error(res, 413, "bomb")
    # a real one: 3000 x 3000 of zeros compresses to a few kB
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 64 * 1024
    config = client.app.state.ctx.config
    old, config.max_pixels = config.max_pixels, 4_000_000
    try:
        files = [("image", ("bomb2.png", buf.getvalue(), "image/png"))]
        res = client.post("/api/collections/photos/search/image", files=files)
    finally:
        config.max_pixels = old
    assert_error(res, 413, "bomb")
    still_serving(client)


def test_non_image_and_truncated_uploads(client):
    cases = [
        (b"%PDF-1.4 not an image", 415, "not an image"),
        (b"", 415, "empty"),
        (png()[:60], 422, "truncated"),
        (png()[:20], 422, "cannot decode"),
    ]
    for data, status, needle in cases:
        files = [("image", ("x.png", data, "image/png"))]
        res = client.post("/api/collections/photos/search/image", files=files)
        assert_error(res, status, needle)
    still_serving(client)


# -- bad input: queries ----------------------------------------------------------------------


def test_malformed_requests(client):
    url = "/api/collections/photos/search"
    headers = {"content-type": "application/json"}
    assert_error(client.post(url, content=b'{"text": "x",', headers=headers), 400, "malformed")
    assert_error(client.post(url, content=b"\xff\xfe", headers=headers), 400, "malformed")
    assert_error(client.post(url, json=["not", "an", "object"]), 422)
    assert_error(client.post(url, json={"txet": "typo"}), 422, "txet")
    assert_error(client.post(url, json={"text": "x", "k": "ten"}), 422, "k")
    assert_error(client.post(url, json={}), 400, "empty query")
    res = client.post(
        "/api/collections/photos/search/image", data={"query": "{not json"}, files=[]
    )
    assert_error(res, 400, "not valid JSON")
    assert_error(client.post("/api/collections/nope/search", json={"text": "x"}), 404, "nope")
    assert_error(client.get("/api/collections/nope/thumbs/0"), 404, "no collection")
    res = client.post(url, json={"text": "x", "where": "colour = 'red'"})
    assert_error(res, 400, "colour")
    assert "width" in res.json()["error"]  # the known columns are listed
    still_serving(client)


INJECTIONS = [
    "1=1; DROP TABLE metadata",
    "width > 0; COPY metadata TO '/tmp/vlms-pwned.csv'",
    "COPY metadata TO '/tmp/vlms-pwned.csv'",
    "ATTACH '/tmp/vlms-pwned.db' AS x",
    "read_csv('/etc/passwd') IS NOT NULL",
    "length(read_text('/etc/passwd')) > 0",
    "EXISTS (SELECT * FROM read_csv('/etc/passwd'))",
    "id IN (SELECT 1)",
    "path = (FROM metadata LIMIT 1)",
    "id IN (SELECT * FROM 'data.parquet')",
    "path = '' UNION SELECT 1",
    "1=1 -- comment",
    "1=1 /* comment */",
    "getenv('HOME') IS NOT NULL",
    "INSTALL httpfs",
    "PRAGMA version",
    "SET enable_external_access = true",
    "width > 0) OR (1=1",
    "(width > 0",
    "length(repeat('x', 2000000000)) > 0",
    "width > ?",
    "width > 1\x00; DROP TABLE metadata",
    "x" * 3000,
]


@pytest.mark.parametrize("where", INJECTIONS)
def test_sql_injection_in_where_is_refused(client, where):
    res = client.post("/api/collections/photos/search", json={"text": "x", "where": where})
    assert_error(res, 400)
    res = client.get("/api/collections/photos/similar/0", params={"where": where})
    assert_error(res, 400)
    assert not list(Path("/tmp").glob("vlms-pwned*"))
    still_serving(client)


def test_boolean_filters_still_work(client):
    res = client.post(
        "/api/collections/photos/search",
        json={"text": "x", "k": 100, "where": "format = 'PNG' AND path LIKE 'img%'"},
    )
    assert res.status_code == 200 and len(res.json()["hits"]) == 12


@pytest.mark.parametrize("k", [0, -1, -(2**63), 1001, 10**12, 10**30])
def test_bad_k(client, k):
    res = client.post("/api/collections/photos/search", json={"text": "x", "k": k})
    assert_error(res, 422, "k")
    assert_error(client.get(f"/api/collections/photos/similar/0?k={k}"), 422, "k")


def test_k_above_the_collection_size_returns_what_there_is(client):
    res = client.post("/api/collections/photos/search", json={"text": "x", "k": 1000})
    assert res.status_code == 200 and len(res.json()["hits"]) == 12


# -- API key, loopback -----------------------------------------------------------------------


def test_api_key_protects_every_endpoint(coll_path):
    key = "s3cret-key-0123456789"
    app = create_app(ServerConfig(collections={"photos": coll_path}, api_key=key))
    c = TestClient(app)
    urls = ["/", "/api/health", "/api/collections", "/metrics", "/docs", "/openapi.json",
            "/api/collections/photos/thumbs/0", "/static/app.js"]  # fmt: skip
    for url in urls:
        res = c.get(url)
        assert res.status_code == 401, url
        assert res.headers["www-authenticate"].startswith("Basic")
        assert c.get(url, headers={"x-api-key": "wrong-key-0123456789"}).status_code == 401
    assert c.post("/api/collections/photos/search", json={"text": "x"}).status_code == 401
    basic = base64.b64encode(f"anyone:{key}".encode()).decode()
    for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"},
                    {"authorization": f"Basic {basic}"}):  # fmt: skip
        assert c.get("/api/health", headers=headers).status_code == 200, headers


def test_serve_refuses_non_loopback_without_flag(coll_path, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vlmsearch.cli.app import app as cli
    from vlmsearch.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    res = CliRunner().invoke(cli, ["serve", str(coll_path), "--host", "0.0.0.0"])
    assert res.exit_code == 1 and "--allow-remote" in res.output
    res = CliRunner().invoke(cli, ["serve", str(tmp_path / "none")])
    assert res.exit_code == 1 and "no collection" in res.output
    short = tmp_path / "key"
    short.write_text("short\n")
    res = CliRunner().invoke(cli, ["serve", str(coll_path), "--api-key-file", str(short)])
    assert res.exit_code == 1 and "at least 16" in res.output


# -- concurrency and live updates --------------------------------------------------------------


def test_concurrent_requests_keep_their_own_parameters(app):
    import httpx

    def one(i: int) -> tuple[int, int, int]:
        k = 1 + i % 12
        with httpx.Client(base_url=base, timeout=30) as c:
            if i % 3 == 0:
                r = c.get(f"/api/collections/photos/similar/{i % 12}", params={"k": k})
            else:
                r = c.post("/api/collections/photos/search", json={"text": f"q {i}", "k": k})
            t = c.get(f"/api/collections/photos/thumbs/{i % 12}")
        want = min(k, 11) if i % 3 == 0 else k
        return r.status_code + t.status_code - 200, len(r.json()["hits"]), want

    with live_server(app) as base, ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(96)))
    assert all(status == 200 for status, _, _ in results)
    assert all(got == want for _, got, want in results)


def test_server_sees_new_commits_without_restart(tmp_path, tiny_encoder):
    root = tmp_path / "live"
    path = build_collection(root, tiny_encoder, n=6)
    app = create_app(ServerConfig(collections={"live": path}))
    c = TestClient(app, base_url="http://localhost")
    assert c.get("/api/health").json()["collections"]["live"]["images"] == 6
    errors: list[str] = []
    stop = threading.Event()
    counts: set[int] = set()

    def reader() -> None:
        while not stop.is_set():
            r = c.post("/api/collections/live/search", json={"text": "x", "k": 100})
            if r.status_code != 200:
                errors.append(r.text)
            else:
                counts.add(len(r.json()["hits"]))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for step in range(3):  # three index runs, each committing several times
            make_images(root, 4, prefix=f"new{step}-")
            Collection.index(root, encoder=tiny_encoder,
                             options=IngestOptions(workers=0, commit_every=2))  # fmt: skip
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert counts <= {6, 8, 10, 12, 14, 16, 18}  # only committed states, never a half one
    health = c.get("/api/health").json()["collections"]["live"]
    assert health["images"] == 18 and health["reload_error"] is None
    res = c.post("/api/collections/live/search", json={"text": "x", "k": 100})
    assert len(res.json()["hits"]) == 18


def test_rerank_depth_defaults_to_the_rerankers_own(client):
    """Without rerank_top the server uses the reranker's default, as the CLI does: the region
    teacher on a CPU reranks 10 hits, not 50 (issue 15)."""
    res = client.post(
        "/api/collections/photos/search", json={"text": "a square", "k": 12, "rerank": "region"}
    )
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    assert len(hits) == 12
    assert sum(1 for h in hits if (h.get("reranker") or "").startswith("region")) == 10
