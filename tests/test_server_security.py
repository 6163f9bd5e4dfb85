"""Issue 14, server items: each test reproduces an attack on `vlmsearch serve`."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from tests.serve_helpers import build_collection  # noqa: E402
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
            content=json.dumps({"labels": ["a", "b"]}).encode()[:-1] + b', "x": ' + deep.encode()
            + b"}",
            headers={"content-type": "application/json"},
        )
        assert_error(res, (400, 422))
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    ok = client.post("/api/collections/photos/search", json={"text": "x", "k": 2})
    assert ok.status_code == 200
