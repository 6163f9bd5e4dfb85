"""Messages worded for where they are shown: filter syntax errors point at what the user
typed, the HTTP API does not name a CLI flag, and a collection still being created says so
(with the writer's pid) instead of "not a collection"."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmsearch.collection import Collection
from vlmsearch.errors import CollectionError, QueryError
from vlmsearch.ingest.manifest import new_manifest
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage import metadata
from vlmsearch.storage.layout import Layout


@pytest.mark.parametrize(
    ("where", "near"), [("width >", '">"'), ("path LIKE 'c%' AND", '"AND"'), ("width = = 3", '"="')]
)
def test_syntax_errors_point_at_the_users_text(where: str, near: str) -> None:
    with pytest.raises(QueryError) as e:
        metadata.validate_where(where)
    msg = str(e.value)
    assert msg.startswith("invalid where filter ")  # the CLI option and the HTTP field alike
    assert f"near {near}" in msg and "')'" not in msg and '")"' not in msg


def test_http_filter_error_does_not_name_the_cli_flag(tmp_path: Path, tiny_encoder) -> None:
    from fastapi.testclient import TestClient

    from tests.serve_helpers import build_collection
    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    path = build_collection(tmp_path / "photos", tiny_encoder, n=3)
    app = create_app(ServerConfig(collections={"p": path}))
    client = TestClient(app, base_url="http://127.0.0.1")
    res = client.post("/api/collections/p/search", json={"text": "x", "where": "width >"})
    assert res.status_code == 400
    assert "--where" not in res.json()["error"] and "where filter" in res.json()["error"]


def _hold_lock(coll: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from pathlib import Path; "
        "from vlmsearch.storage.lock import WriterLock; "
        "lock = WriterLock(Path(sys.argv[1]) / '.lock'); lock.__enter__(); "
        "print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(coll)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_collection_being_created_says_so_with_the_pid(tmp_path: Path, tiny_encoder) -> None:
    coll = tmp_path / "photos" / ".vlmsearch"
    coll.mkdir(parents=True)
    proc = _hold_lock(coll)
    try:
        # before the first run's empty manifest exists
        with pytest.raises(CollectionError, match=rf"being created by pid {proc.pid}\b"):
            Layout(coll).read_manifest()
        # the empty manifest of a first run that has not committed yet
        manifest = new_manifest(tmp_path / "photos", tiny_encoder, IngestOptions())
        (coll / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(CollectionError, match=rf"being created by pid {proc.pid}\b"):
            Collection.open(coll)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.1)
    # nobody writing: an empty folder is just not a collection, an empty manifest opens
    assert len(Collection.open(coll)) == 0
    (coll / "manifest.json").unlink()
    with pytest.raises(CollectionError, match="is not a vlmsearch collection"):
        Layout(coll).read_manifest()
