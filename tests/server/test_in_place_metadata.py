"""Metadata read in place (as collections past ``COPY_MAX_ROWS`` are, 10M rows and more):
the facets endpoint, text-column search and the choice of rows to caption answer with SQL
over the segments and never materialise the whole table (gigabytes at that size)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import TINY  # noqa: E402
from vlmsearch import Collection  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402
from vlmsearch.server.app import create_app  # noqa: E402
from vlmsearch.server.config import ServerConfig  # noqa: E402
from vlmsearch.storage import metadata  # noqa: E402

WORDS = ["red", "green", "blue"]


def _no_table(self: metadata.MetadataFilter) -> None:
    raise AssertionError("the whole metadata table was materialised")


@pytest.fixture
def in_place(image_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[int, str]]:
    """A collection read in place, captions on all rows but the last two; returns its path
    and the captions. After it, materialising the table fails."""
    monkeypatch.setattr(metadata, "COPY_MAX_ROWS", 0)
    coll = Collection.index(image_dir, model=TINY, options=IngestOptions(workers=0))
    ids = coll.vectors.ids.tolist()
    caps = {i: f"a {WORDS[j % 3]} square, number {j}" for j, i in enumerate(ids[:-2])}
    coll._write_text_column("caption", caps, {"lm": "test"})
    monkeypatch.setattr(metadata.MetadataFilter, "table", property(_no_table))
    return coll.path, caps


def test_facets_and_text_column_search_never_materialise_the_table(in_place) -> None:
    path, caps = in_place
    app = create_app(ServerConfig(collections={"photos": path}))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        res = client.get("/api/collections/photos")
        assert res.status_code == 200, res.text
        cols = res.json()["columns"]
        assert cols["caption"] == {
            "type": "string",
            "kind": "text",
            "values": sorted(set(caps.values())),
        }
        assert cols["format"]["values"] == ["PNG"]
        assert cols["path"] == {"type": "string", "kind": "text"}  # never listed
        rows = Collection.open(path).rows(range(100)).values()  # every row (by id: SQL)
        widths = [r["width"] for r in rows if r["status"] == "ok"]
        assert cols["width"] == {"type": "int32", "kind": "number"} | {
            "min": min(widths),
            "max": max(widths),
        }
        assert cols["indexed_at"]["kind"] == "other"
        assert not {"status", "error", "content_hash", "mtime_ns", "caption_settings"} & set(cols)

        target = next(iter(caps))
        body = {"text": caps[target], "text_column": "caption", "k": 50}
        res = client.post("/api/collections/photos/search", json=body)
        assert res.status_code == 200, res.text
        hits = res.json()["hits"]
        assert hits[0]["id"] == target
        assert {h["id"] for h in hits} == set(caps)  # rows without a caption are no hits

    coll = Collection.open(path)
    assert coll.reader.metadata_filter().in_place
    assert coll.search(caps[target], text_column="caption", k=1)[0].id == target
    with pytest.raises(Exception, match="no text column 'width'"):
        coll.search("x", text_column="width")


def test_caption_targets_never_materialise_the_table(in_place) -> None:
    path, caps = in_place
    coll = Collection.open(path)
    live = set(coll.vectors.ids.tolist())
    uncaptioned = sorted(live - set(caps))
    assert coll.caption_targets(write_column="caption").tolist() == uncaptioned
    assert coll.caption_targets(where="caption IS NULL").tolist() == uncaptioned
    assert len(coll.caption_targets(write_column="caption", overwrite=True)) == len(live)
    # the first run of `--where "caption2 IS NULL" --write-column caption2`: no column yet
    first = coll.caption_targets(where="caption2 IS NULL", write_column="caption2")
    assert first.tolist() == sorted(live)
    assert len(coll.caption_targets(where="caption2 IS NOT NULL", write_column="caption2")) == 0
    with pytest.raises(Exception, match="caption3"):
        coll.caption_targets(where="caption3 IS NULL", write_column="caption2")
