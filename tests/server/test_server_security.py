"""Issue 14, server items: each test reproduces an attack on `vlmsearch serve`."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import make_images  # noqa: E402
from tests.serve_helpers import build_collection  # noqa: E402
from vlmsearch import Collection  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402
from vlmsearch.server.app import create_app  # noqa: E402
from vlmsearch.server.config import ServerConfig  # noqa: E402


@pytest.fixture(scope="module")
def coll_path(tmp_path_factory, tiny_encoder):
    return build_collection(tmp_path_factory.mktemp("secure") / "photos", tiny_encoder, n=6)


@pytest.fixture(scope="module")
def client(coll_path):
    app = create_app(ServerConfig(collections={"photos": coll_path}))
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def assert_error(res, status: int | tuple[int, ...], needle: str = "") -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert res.status_code in statuses, res.text
    body = res.json()
    assert body["status"] == res.status_code and body["error"], body
    assert needle.lower() in body["error"].lower(), body["error"]


# -- item 23: ids beyond int64, JSON nested 100k deep: 4xx, no traceback ------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/collections/photos/images/99999999999999999999999",
        "/api/collections/photos/thumbs/99999999999999999999999",
        "/api/collections/photos/similar/99999999999999999999999",
        "/api/collections/photos/images/9223372036854775808",
    ],
)
def test_ids_beyond_int64_are_4xx(client, caplog, url):
    with caplog.at_level(logging.ERROR):
        res = client.get(url)
        res2 = client.post(url.replace("/images/", "/caption/").replace("/thumbs/", "/caption/"))
    assert_error(res, (404, 422))
    assert res2.status_code in (404, 405, 422), res2.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_deeply_nested_query_json_is_4xx(client, caplog):
    deep = "[" * 100_000 + "]" * 100_000
    with caplog.at_level(logging.ERROR):
        res = client.post(
            "/api/collections/photos/search/image", data={"query": '{"text": ' + deep + "}"}
        )
        assert_error(res, (400, 422), "nested")
        res = client.post(
            "/api/collections/photos/search",
            content=('{"text": ' + deep + "}").encode(),
            headers={"content-type": "application/json"},
        )
        assert_error(res, (400, 422))
        res = client.post(
            "/api/collections/photos/classify",
            content=json.dumps({"labels": ["a", "b"]}).encode()[:-1]
            + b', "x": '
            + deep.encode()
            + b"}",
            headers={"content-type": "application/json"},
        )
        assert_error(res, (400, 422))
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    ok = client.post("/api/collections/photos/search", json={"text": "x", "k": 2})
    assert ok.status_code == 200


# -- item 1: an indexed image swapped for a link after indexing -------------------------------


def _client_for(path) -> TestClient:
    app = create_app(ServerConfig(collections={"c": path}))
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def test_symlink_swap_after_indexing_is_not_served(tmp_path, tiny_encoder):
    root = tmp_path / "photos"
    coll_path = build_collection(root, tiny_encoder, n=4)
    c = _client_for(coll_path)
    row = Collection.open(coll_path).rows([0])[0]
    src = root / row["path"]
    original = src.read_bytes()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET api key 0123456789")
    # the attack of the issue: the image becomes a link to a file outside the folder
    src.unlink()
    src.symlink_to(secret)
    for kind in ("images", "thumbs"):
        res = c.get(f"/api/collections/c/{kind}/0")
        assert_error(res, 404, "inside the indexed folder")
        assert "SECRET" not in res.text
    # even a link to an identical image (same size and mtime) outside the folder
    outside = tmp_path / "elsewhere" / "copy.png"
    outside.parent.mkdir()
    outside.write_bytes(original)
    os.utime(outside, ns=(row["mtime_ns"], row["mtime_ns"]))
    src.unlink()
    src.symlink_to(outside)
    assert_error(c.get("/api/collections/c/images/0"), 404, "inside")
    assert_error(c.get("/api/collections/c/thumbs/0"), 404, "inside")
    # a link that stays inside the folder is served (the scanner follows those too)
    inside = root / "sub" / "copy.png"
    inside.parent.mkdir()
    inside.write_bytes(original)
    os.utime(inside, ns=(row["mtime_ns"], row["mtime_ns"]))
    src.unlink()
    src.symlink_to(inside)
    res = c.get("/api/collections/c/images/0")
    assert res.status_code == 200 and res.content == original
    assert res.headers["content-type"] == "image/png"
    # something that is not a regular file (a FIFO would block a plain open for ever)
    src.unlink()
    os.mkfifo(src)
    assert_error(c.get("/api/collections/c/images/0"), 404)


def test_changed_file_is_409_until_indexed_again(tmp_path, tiny_encoder):
    root = tmp_path / "photos"
    coll_path = build_collection(root, tiny_encoder, n=4)
    c = _client_for(coll_path)
    assert c.get("/api/collections/c/thumbs/1").status_code == 200
    row = Collection.open(coll_path).rows([1])[1]
    src = root / row["path"]
    Image.new("RGB", (60, 20), (0, 0, 0)).save(src)
    assert_error(c.get("/api/collections/c/images/1"), 409, "vlmsearch index")
    assert_error(c.get("/api/collections/c/thumbs/1"), 409, "changed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        Collection.index(root, encoder=tiny_encoder, options=IngestOptions(workers=0))
    res = c.get("/api/collections/c/thumbs/1")
    assert res.status_code == 200 and Image.open(io.BytesIO(res.content)).size == (60, 20)
    assert len(list((coll_path / "thumbs").rglob("thumb-1-*.jpg"))) == 1  # the old one went
    assert c.get("/api/collections/c/images/1").content == src.read_bytes()


def test_planted_link_in_thumbnail_cache_is_not_followed(tmp_path, tiny_encoder):
    root = tmp_path / "photos"
    coll_path = build_collection(root, tiny_encoder, n=2)
    row = Collection.open(coll_path).rows([0])[0]
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    cached = coll_path / "thumbs" / "000000" / f"thumb-0-256-{row['size']}-{row['mtime_ns']}.jpg"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(secret)
    res = _client_for(coll_path).get("/api/collections/c/thumbs/0")
    assert res.status_code == 200 and b"SECRET" not in res.content
    assert Image.open(io.BytesIO(res.content)).format == "JPEG"
    assert secret.read_text() == "TOP SECRET"  # nothing was written through the link


def test_link_swapped_in_after_the_check_is_not_followed(tmp_path):
    """The race: open_inside resolved the path, then the last component became a link."""
    from vlmsearch.safe_open import UnsafeFile, _open_walk

    (tmp_path / "d").mkdir()
    (tmp_path / "secret").write_text("x")
    (tmp_path / "d" / "a.png").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafeFile):
        _open_walk(str(tmp_path), ("d", "a.png"))
    (tmp_path / "e").symlink_to(tmp_path / "d")  # a folder swapped for a link
    with pytest.raises(UnsafeFile):
        _open_walk(str(tmp_path), ("e", "b.png"))


def test_scanner_follows_only_links_that_stay_inside(tmp_path):
    from vlmsearch.imaging.scan import scan

    root = tmp_path / "photos"
    make_images(root / "real", 2)
    make_images(tmp_path / "outside", 2, prefix="out")
    (root / "inner-link").symlink_to(root / "real")
    (root / "outer-link").symlink_to(tmp_path / "outside")
    (root / "file-out.png").symlink_to(tmp_path / "outside" / "out0000.png")
    (root / "file-in.png").symlink_to(root / "real" / "img0000.png")
    got = sorted(f.path for f in scan(root))
    # the inner folder is reached once (by one of its two names); nothing from outside
    assert "file-in.png" in got and len(got) == 3, got
    assert {p.rsplit("/", 1)[-1] for p in got} == {"file-in.png", "img0000.png", "img0001.png"}
    assert not any("out" in p for p in got)


# -- item 19: DNS rebinding: the Host header is checked when there is no API key ---------------


def test_foreign_host_is_refused_without_api_key(coll_path):
    app = create_app(ServerConfig(collections={"photos": coll_path}, allowed_hosts=("pics.lan",)))
    c = TestClient(app, raise_server_exceptions=False)
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "attacker"):
        res = c.get("/api/collections/photos/images/0", headers={"host": host})
        assert_error(res, 421, "--allowed-host")
        assert res.headers["content-type"] == "application/json"
        assert_error(c.get("/", headers={"host": host}), 421)
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "pics.lan:80"):
        res = c.get("/api/collections/photos/images/0", headers={"host": host})
        assert res.status_code == 200, (host, res.text)
    # with an API key the key is the guard (e.g. behind a reverse proxy with its own name)
    key = "s3cret-key-0123456789"
    app = create_app(ServerConfig(collections={"photos": coll_path}, api_key=key))
    res = TestClient(app).get("/api/health", headers={"host": "evil.example", "x-api-key": key})
    assert res.status_code == 200
    # '*' turns the check off; the bound address is allowed
    app = create_app(ServerConfig(collections={"photos": coll_path}, allowed_hosts=("*",)))
    assert TestClient(app).get("/api/health", headers={"host": "any"}).status_code == 200
    app = create_app(ServerConfig(collections={"photos": coll_path}, host="10.1.2.3"))
    c = TestClient(app)
    assert c.get("/api/health", headers={"host": "10.1.2.3:8000"}).status_code == 200
    assert c.get("/api/health", headers={"host": "10.1.2.4:8000"}).status_code == 421


def test_host_names_are_parsed():
    from vlmsearch.server.hosts import host_name

    assert host_name("[::1]:8000") == "::1"
    assert host_name("Example.COM.:80") == "example.com"
    assert host_name("localhost") == "localhost"
    assert host_name("a:b") == "a:b"  # not a port: the whole value, which matches nothing


# -- item 18: slowloris: header and body deadlines, a connection cap ---------------------------


def _recv_all(sock, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``limit`` s pass); and when."""
    start = time.monotonic()
    sock.settimeout(limit)
    got = b""
    try:
        while True:
            b = sock.recv(4096)
            if not b:
                break
            got += b
    except (TimeoutError, ConnectionResetError):
        pass
    return got, time.monotonic() - start


@pytest.fixture(scope="module")
def slow_server(coll_path):
    from tests.serve_helpers import live_server
    from vlmsearch.server.timeouts import uvicorn_options

    config = ServerConfig(
        collections={"photos": coll_path}, header_timeout=1.0, body_timeout=1.5, max_connections=4
    )
    with live_server(create_app(config), **uvicorn_options(config)) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def test_partial_header_is_cut_off(slow_server):
    # a header never finished; one trickled a byte at a time; a connection that sends nothing
    with socket.create_connection(slow_server) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        got, took = _recv_all(s, 10)
    assert got.startswith(b"HTTP/1.1 408") and took < 5, (got, took)
    with socket.create_connection(slow_server) as s:
        start = time.monotonic()
        closed = False
        for b in b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaa":
            try:
                s.sendall(bytes([b]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        got, took = _recv_all(s, 10)
        assert closed or got.startswith(b"HTTP/1.1 408"), got
        assert time.monotonic() - start < 8  # the deadline is not reset by each byte
    with socket.create_connection(slow_server) as s:
        got, took = _recv_all(s, 10)
    assert took < 5, took
    # a complete request on a fresh connection is answered as before
    with socket.create_connection(slow_server) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        got, _ = _recv_all(s, 10)
    assert got.startswith(b"HTTP/1.1 200"), got


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_partial_body_is_cut_off(slow_server, kind):
    if kind == "json":
        head = (
            b"POST /api/collections/photos/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        first = b'{"text": "x'
    else:
        head = (
            b"POST /api/collections/photos/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        )
        first = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    with socket.create_connection(slow_server) as s:
        s.sendall(head + first)
        start = time.monotonic()
        for _ in range(10):  # keep trickling: the deadline covers the whole body
            time.sleep(0.3)
            try:
                s.sendall(b"x")
            except OSError:
                break
        got, _ = _recv_all(s, 10)
        took = time.monotonic() - start
    assert got.startswith(b"HTTP/1.1 408"), got
    assert b"connection: close" in got.lower() and b'"status":408' in got.replace(b" ", b""), got
    assert took < 8, took


def test_connections_are_capped(slow_server):
    idle = [socket.create_connection(slow_server) for _ in range(4)]
    try:
        time.sleep(0.2)
        with socket.create_connection(slow_server) as s:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            got, _ = _recv_all(s, 10)
        assert got.startswith(b"HTTP/1.1 503"), got
    finally:
        for s in idle:
            s.close()
    time.sleep(1.5)  # the idle ones are gone: served again
    with socket.create_connection(slow_server) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        got, _ = _recv_all(s, 10)
    assert got.startswith(b"HTTP/1.1 200"), got


def test_serve_passes_limits_and_hosts_to_uvicorn(coll_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from vlmsearch.cli.app import app as cli

    seen: dict = {}

    class Server:  # serve binds its own socket and hands it to uvicorn.Server(config)
        def __init__(self, config: uvicorn.Config) -> None:
            seen.update(
                app=config.app,
                http=config.http,
                limit_concurrency=config.limit_concurrency,
                timeout_keep_alive=config.timeout_keep_alive,
            )

        def run(self, sockets: list) -> None:
            for sock in sockets:
                sock.close()

    monkeypatch.setattr(uvicorn, "Server", Server)
    args = ["serve", str(coll_path), "--port", "0", "--header-timeout", "3", "--body-timeout",
            "7", "--max-connections", "9", "--allowed-host", "pics.lan"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert seen["http"].header_timeout == 3.0 and seen["limit_concurrency"] == 9
    assert seen["timeout_keep_alive"] > 0
    config = seen["app"].state.ctx.config
    assert config.body_timeout == 7.0 and config.allowed_hosts == ("pics.lan",)
    c = TestClient(seen["app"])
    assert c.get("/api/health", headers={"host": "pics.lan"}).status_code == 200
    assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 421


# -- item 16: bounded work per request; one request does not starve the others ---------------


def test_oversized_requests_are_refused_before_any_model_call(client):
    url = "/api/collections/photos"
    encoder = client.app.state.ctx.registry.get("photos").current().encoder
    calls = []
    inner = encoder._inner
    encoder._inner = _Recording(inner, calls)
    try:
        cases = [
            (f"{url}/search", {"text": [f"term {i}" for i in range(20_000)]}, "text terms"),
            (f"{url}/search", {"text": "a", "negative": ["n"] * 40}, "text terms"),
            (f"{url}/search", {"text": "x" * 5000}, "characters"),
            (f"{url}/classify", {"labels": [f"l{i}" for i in range(101)]}, "labels"),
            (
                f"{url}/classify",
                {"labels": [f"l{i}" for i in range(30)], "templates": "openai"},
                "prompts",
            ),  # fmt: skip
            (f"{url}/classify", {"labels": ["a", "b" * 5000]}, "characters"),
        ]
        for path, body, needle in cases:
            start = time.monotonic()
            res = client.post(path, json=body)
            assert_error(res, 422, needle)
            assert "--max-" in res.json()["error"]
            assert time.monotonic() - start < 5
        files = [("image", (f"{i}.png", _png(), "image/png")) for i in range(17)]
        res = client.post(f"{url}/search/image", files=files)
        assert_error(res, 422, "query images")
        assert calls == []  # refused before the model ran at all
        # within the limits all is as before
        res = client.post(
            f"{url}/classify", json={"labels": ["red", "blue"], "templates": "openai"}
        )
        assert res.status_code == 200 and calls
    finally:
        encoder._inner = inner


class _Recording:
    """An encoder proxy that records (and can slow down or hold) its text calls."""

    def __init__(self, inner, calls, per_text: float = 0.0, hold=None):
        self.inner, self.calls, self.per_text, self.hold = inner, calls, per_text, hold

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_texts(self, texts):
        self.calls.append(len(texts))
        if self.hold is not None:
            self.hold()
        time.sleep(self.per_text * len(texts))
        return self.inner.encode_texts(texts)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def two_client(tmp_path_factory, tiny_encoder, coll_path):
    other = build_collection(tmp_path_factory.mktemp("other") / "more", tiny_encoder, n=4)
    app = create_app(ServerConfig(collections={"a": coll_path, "b": other}))
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def test_a_long_request_does_not_block_another_collection(two_client):
    encoder = two_client.app.state.ctx.registry.get("a").current().encoder
    entered, release = threading.Event(), threading.Event()
    inner = encoder._inner
    encoder._inner = _Recording(inner, [], hold=lambda: (entered.set(), release.wait(30)))
    results: list = []
    heavy = threading.Thread(
        target=lambda: results.append(
            two_client.post("/api/collections/a/classify", json={"labels": ["x", "y"]})
        )
    )
    heavy.start()
    try:
        assert entered.wait(20)  # collection a's model is busy (and its lock held)
        done: list = []
        light = threading.Thread(
            target=lambda: done.append(
                two_client.post("/api/collections/b/search", json={"text": "x", "k": 2})
            )
        )
        light.start()
        light.join(10)
        assert done and done[0].status_code == 200, "collection b waited for collection a"
    finally:
        release.set()
        heavy.join(30)
        encoder._inner = inner
    assert results[0].status_code == 200


def test_a_long_request_shares_its_collection_fairly(two_client):
    encoder = two_client.app.state.ctx.registry.get("a").current().encoder
    inner = encoder._inner
    calls: list = []
    encoder._inner = _Recording(inner, calls, per_text=0.01)  # 700 prompts: about 7 s
    results: list = []
    labels = [f"label {i}" for i in range(100)]
    heavy = threading.Thread(
        target=lambda: results.append(
            two_client.post("/api/collections/a/classify", json={"labels": labels})
        )
    )
    heavy.start()
    try:
        while not calls:
            time.sleep(0.01)
        start = time.monotonic()
        res = two_client.post("/api/collections/a/search", json={"text": "x", "k": 2})
        took = time.monotonic() - start
        assert res.status_code == 200
        assert heavy.is_alive() and took < 3.5, took  # served between the big one's slices
    finally:
        heavy.join(60)
        encoder._inner = inner
    assert results[0].status_code == 200 and results[0].json()["total"] == 6


def test_fair_lock_hands_over_in_arrival_order():
    from vlmsearch.server.scheduling import FairLock

    lock, order = FairLock(), []
    lock.acquire()
    with lock:  # re-entrant
        pass
    threads = []
    for i in range(4):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        threads.append(t)
        while len(lock._queue) < i + 1:
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]


# -- item 21: a text-column search does not write to the collection ---------------------------


def _snapshot(coll_path) -> dict:
    """Every file of the collection but the thumbnail cache: name -> (size, mtime_ns)."""
    out = {}
    for p in sorted(coll_path.rglob("*")):
        if p.is_file() and "thumbs" not in p.relative_to(coll_path).parts:
            st = p.stat()
            out[str(p.relative_to(coll_path))] = (st.st_size, st.st_mtime_ns)
    return out


def test_text_column_search_never_writes(tmp_path, tiny_encoder):
    root = tmp_path / "photos"
    coll_path = build_collection(root, tiny_encoder, n=6)
    writer = Collection.open(coll_path)
    writer.use_encoder(tiny_encoder)
    writer.classify(["red", "blue", "green"], templates="simple", write_column="colour")
    before, generation = _snapshot(coll_path), Collection.open(coll_path).manifest["generation"]
    assert "text_vectors" not in Collection.open(coll_path).manifest
    app = create_app(ServerConfig(collections={"c": coll_path}))
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    body = {"text": "red", "text_column": "colour", "k": 6}
    for _ in range(2):
        res = c.post("/api/collections/c/search", json=body)
        assert res.status_code == 200, res.text
        assert len(res.json()["hits"]) == 6 and res.json()["generation"] == generation
    res = c.post("/api/collections/c/search", json={**body, "text_weight": 0.5})
    assert res.status_code == 200, res.text
    assert _snapshot(coll_path) == before  # no new generation, no embeddings file, no lock
    assert Collection.open(coll_path).manifest["generation"] == generation
    # more texts to embed than the server allows: refused, with the way out
    app = create_app(ServerConfig(collections={"c": coll_path}, max_text_embed=2))
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    for _ in range(2):
        res = c.post("/api/collections/c/search", json=body)
        assert_error(res, 409, "--text-column colour")
    assert _snapshot(coll_path) == before
    # once stored from the command line, the server uses them
    writer = Collection.open(coll_path)
    writer.use_encoder(tiny_encoder)
    writer.search("red", text_column="colour")
    assert "colour" in Collection.open(coll_path).manifest["text_vectors"]
    res = c.post("/api/collections/c/search", json=body)
    assert res.status_code == 200, res.text
