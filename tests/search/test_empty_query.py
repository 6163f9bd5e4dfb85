"""An empty or blank query text is refused (issue 15, item 6) -- in the CLI, the Python
API and the HTTP API -- instead of ranking every image by the embedding of nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.serve_helpers import build_collection
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.errors import QueryError


@pytest.fixture
def coll_path(tmp_path: Path, tiny_encoder) -> Path:
    return build_collection(tmp_path / "photos", tiny_encoder, n=6)


@pytest.mark.parametrize(
    "args",
    [
        [""],
        ["   "],
        ["2: "],
        ["a red square", ""],
        ["a red square", "--negative", ""],
        ["a red square", "-n", " \t"],
    ],
)
def test_cli_refuses_blank_query_text(coll_path: Path, args: list[str]) -> None:
    res = CliRunner().invoke(app, ["search", *args, "-c", str(coll_path), "--json"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: empty"), res.stderr
    assert res.stdout == ""


def test_python_api_refuses_blank_query_text(coll_path: Path) -> None:
    coll = Collection.open(coll_path)
    for kwargs in ({"text": ""}, {"text": [" ", "a cat"]}, {"text": "a cat", "negative": ""}):
        with pytest.raises(QueryError, match="empty"):
            coll.search(**kwargs)
    assert len(coll.search("a cat", k=2)) == 2  # a real query still works
    assert len(coll.search("2:a cat", negative="0.5:a dog", k=2)) == 2


def test_http_api_refuses_blank_query_text(coll_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    app = create_app(ServerConfig(collections={"p": coll_path}))
    client = TestClient(app, base_url="http://127.0.0.1")  # a loopback Host
    for body in ({"text": " "}, {"text": [""]}, {"text": "a cat", "negative": [" "]}):
        res = client.post("/api/collections/p/search", json=body)
        assert res.status_code == 400, (body, res.text)
        assert "empty" in res.json()["error"]
    res = client.post("/api/collections/p/search", json={"text": "a cat", "k": 2})
    assert res.status_code == 200 and len(res.json()["hits"]) == 2
