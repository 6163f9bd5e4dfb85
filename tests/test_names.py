"""File names and folders that misbehave (issue 14, items 4, 5 and 22): a folder that
cannot be listed, a file that cannot be read, names that are not UTF-8, names holding
terminal escapes or newlines."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, draw_image, make_images
from vlmsearch import Collection
from vlmsearch.cli import output
from vlmsearch.cli.app import app
from vlmsearch.errors import CollectionError
from vlmsearch.imaging import decode
from vlmsearch.ingest.options import IngestOptions

runner = CliRunner()


def _index(root: Path, encoder) -> Collection:
    return Collection.index(root, encoder=encoder, options=IngestOptions(workers=0, batch_size=4))


def _cli(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def wide(monkeypatch):
    """Consoles wide enough that no table cell folds onto a second line."""
    from rich.console import Console

    monkeypatch.setattr(output, "out", Console(width=500, highlight=False, soft_wrap=True))
    monkeypatch.setattr(output, "err", Console(width=500, highlight=False, stderr=True))


@contextlib.contextmanager
def _unlistable(folder: Path) -> Iterator[None]:
    """``folder`` cannot be listed: chmod 000, or (root ignores modes) a failing scandir."""
    if os.geteuid() != 0:
        folder.chmod(0)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    real = os.scandir
    target = os.path.realpath(folder)

    def scandir(path=".", *a, **kw):
        if os.path.realpath(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "scandir", scandir)
        yield


# -- item 4: a folder that cannot be listed is an error, and its rows are kept -----------------
def test_unlistable_folder_keeps_ids_vectors_and_labels(image_dir, tiny_encoder, wide):
    coll = _index(image_dir, tiny_encoder)
    coll.classify(["red", "blue", "green"], templates="simple", write_column="colour")
    before = {r["path"]: r for r in Collection.open(coll.path).table.to_pylist()}
    deep = {p: r for p, r in before.items() if p.startswith("nested/deeper/")}
    assert len(deep) == 3 and all(r["colour"] for r in deep.values())

    with _unlistable(image_dir / "nested" / "deeper"):
        res = _cli("index", str(image_dir), "--workers", "0")
    assert res.exit_code == 0, res.output
    assert "0 deleted" in res.stderr and "1 errors" in res.stderr
    assert "error nested/deeper: cannot list folder (Permission denied)" in res.stderr

    after = Collection.open(coll.path)
    rows = {r["path"]: r for r in after.table.to_pylist()}
    for p, r in deep.items():  # same id, label and vector as before
        assert rows[p]["id"] == r["id"] and rows[p]["colour"] == r["colour"]
    ids = np.array(sorted(r["id"] for r in deep.values()))
    np.testing.assert_array_equal(after.vectors.get(ids), coll.vectors.get(ids))
    assert len(after) == 15

    # readable again: the files are unchanged, not new
    rep = _index(image_dir, tiny_encoder).last_report
    assert (rep.new, rep.deleted, rep.unchanged, rep.errors) == (0, 0, 15, 0)


def test_unlistable_root_changes_nothing(image_dir, tiny_encoder):
    coll = _index(image_dir, tiny_encoder)
    generation = coll.manifest["generation"]
    with _unlistable(image_dir), pytest.raises(CollectionError, match="cannot list folder"):
        _index(image_dir, tiny_encoder)
    again = Collection.open(coll.path)
    assert again.manifest["generation"] == generation and len(again) == 15


def test_changed_file_that_cannot_be_read_keeps_its_row(image_dir, tiny_encoder, monkeypatch):
    coll = _index(image_dir, tiny_encoder)
    target = image_dir / "img0001.png"
    old = next(r for r in coll.table.to_pylist() if r["path"] == "img0001.png")
    draw_image(target, (0, 0, 0), (50, 50), seed=7)
    os.utime(target, ns=(old["mtime_ns"] + 10**9, old["mtime_ns"] + 10**9))

    read = decode.read_item

    def unreadable(path, *a, **kw):
        if os.fspath(path) == str(target):
            raise PermissionError(13, "Permission denied", str(path))
        return read(path, *a, **kw)

    monkeypatch.setattr(decode, "read_item", unreadable)
    rep = _index(image_dir, tiny_encoder).last_report
    monkeypatch.undo()
    assert rep.errors == 1 and rep.encoded == 0
    assert rep.error_samples[0][0] == "img0001.png"
    assert "Permission denied" in rep.error_samples[0][1]
    kept = Collection.open(coll.path)
    row = next(r for r in kept.table.to_pylist() if r["path"] == "img0001.png")
    assert {k: row[k] for k in ("id", "status", "size", "mtime_ns", "content_hash")} == {
        k: old[k] for k in ("id", "status", "size", "mtime_ns", "content_hash")
    }
    assert old["id"] in kept.vectors.ids
    # readable again: the change is picked up
    rep = _index(image_dir, tiny_encoder).last_report
    assert (rep.changed, rep.encoded, rep.errors) == (1, 1, 0)


# -- item 5: names that are not UTF-8 ---------------------------------------------------------
def _bytes_name(root: Path, raw: bytes, colour=(200, 40, 40)) -> bytes:
    """Create an image at ``root/raw`` (raw bytes, e.g. Latin-1) through bytes paths."""
    tmp = draw_image(root / "tmp-source.png", colour)
    dest = os.fsencode(root) + b"/" + raw
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.rename(os.fsencode(tmp), dest)
    return dest


def test_non_utf8_names_index_search_info_and_serve(image_dir, tiny_encoder, wide):
    cafe = _bytes_name(image_dir, b"caf\xe9.png")
    _bytes_name(image_dir, b"d\xff\xfe/inner.png", (30, 40, 220))
    res = _cli("index", str(image_dir), "--model", TINY, "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert (rep["scanned"], rep["new"], rep["errors"]) == (17, 17, 0)
    # the same files next time: unchanged, not deleted and new again
    rep = json.loads(_cli("index", str(image_dir), "--workers", "0", "--json").stdout)
    assert (rep["new"], rep["deleted"], rep["unchanged"]) == (0, 0, 17)

    coll = Collection.open(image_dir / ".vlmsearch")
    rows = {r["path"]: r for r in coll.table.to_pylist()}
    assert rows["caf\\xe9.png"]["path_bytes"] == b"caf\xe9.png"
    assert rows["d\\xff\\xfe/inner.png"]["path_bytes"] == b"d\xff\xfe/inner.png"
    assert rows["img0000.png"]["path_bytes"] is None
    cafe_id = coll.lookup_file(os.fsdecode(cafe))
    assert cafe_id == rows["caf\\xe9.png"]["id"]
    hit = next(h for h in coll.search("red", k=20) if h.id == cafe_id)
    assert os.fsencode(hit.path) == cafe  # the API gives the name the OS has

    coll_dir = str(image_dir / ".vlmsearch")
    res = _cli("search", "red", "-k", "20", "-c", coll_dir, "--json")
    assert res.exit_code == 0, res.output
    assert "caf\\xe9.png" in {h["relpath"] for h in json.loads(res.stdout)}
    for fmt in ("--csv", None):
        res = _cli("search", "red", "-k", "20", "-c", coll_dir, *([fmt] if fmt else []))
        assert res.exit_code == 0, res.output
        assert "caf\\xe9.png" in res.stdout and "d\\xff\\xfe/inner.png" in res.stdout
    res = _cli("classify", "-c", coll_dir, "--labels", "red,blue", "--templates", "simple")
    assert res.exit_code == 0 and "caf\\xe9.png" in res.stdout, res.output
    assert _cli("info", coll_dir).exit_code == 0

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    app = create_app(ServerConfig(collections={"p": Path(coll_dir)}))
    client = TestClient(app, base_url="http://127.0.0.1")  # a loopback Host (DNS-rebinding check)
    got = client.get(f"/api/collections/p/images/{cafe_id}")
    assert got.status_code == 200 and got.content == Path(os.fsdecode(cafe)).read_bytes()
    assert client.get(f"/api/collections/p/thumbs/{cafe_id}").status_code == 200
    found = client.post("/api/collections/p/search", json={"text": "red", "k": 20})
    assert found.status_code == 200, found.text
    assert "caf\\xe9.png" in {h["relpath"] for h in found.json()["hits"]}


def test_watch_survives_non_utf8_names(tmp_path, tiny_encoder):
    root = tmp_path / "photos"
    make_images(root, 2)
    _bytes_name(root, b"na\xefve.png")
    stop = threading.Event()
    reports = []

    def on_report(rep):
        reports.append(rep)
        stop.set()

    from vlmsearch.ingest.watch import watch

    watch(root, interval=0.05, stop=stop, on_report=on_report, encoder=tiny_encoder,
          options=IngestOptions(workers=0))  # fmt: skip
    assert reports and reports[0].new == 3 and reports[0].errors == 0


# -- item 22: control characters never reach the terminal raw ---------------------------------
EVIL = ["\x1b]0;pwned\x07.png", "a\nrank 1 fake.png", "\u202egnp.png", "cr\rhidden.png"]


def test_control_characters_are_escaped_in_tables_reports_and_errors(image_dir, wide):
    for n, name in enumerate(EVIL):
        shutil.copy(image_dir / f"img000{n}.png", image_dir / name)
    (image_dir / "bad\x1b[2J\nx.png").write_bytes(b"not an image")
    res = _cli("index", str(image_dir), "--model", TINY, "--workers", "0")
    assert res.exit_code == 0, res.output
    for text in (res.stdout, res.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "error bad\\x1b[2J\\nx.png: not an image" in res.stderr

    coll = str(image_dir / ".vlmsearch")
    k = len(Collection.open(coll))  # every indexed image
    assert k == 15 + len(EVIL)
    res = _cli("search", "red", "-k", str(k), "-c", coll)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 1 + k  # the header and one line per hit: no forged row
    assert [ln.split()[0] for ln in lines[1:]] == [str(i) for i in range(1, k + 1)]
    for bad in ("\x1b", "\x07", "\r", "\u202e"):
        assert bad not in res.stdout
    assert "\\x1b]0;pwned\\x07.png" in res.stdout and "a\\nrank 1 fake.png" in res.stdout

    res = _cli("classify", "-c", coll, "--labels", "red,blue", "--templates", "simple")
    assert res.exit_code == 0, res.output
    assert len(res.stdout.splitlines()) == 1 + k and "\x1b" not in res.stdout

    # JSON and CSV stay exact
    hits = json.loads(_cli("search", "red", "-k", str(k), "-c", coll, "--json").stdout)
    assert set(EVIL) <= {h["relpath"] for h in hits}
    rows = list(csv.DictReader(io.StringIO(_cli("search", "red", "-k", str(k), "-c", coll,
                                                "--csv").stdout, newline="")))  # fmt: skip
    assert set(EVIL) <= {r["relpath"] for r in rows}

    # a user error naming such a file is one escaped line too
    res = _cli("search", "--image", str(image_dir / "gone\x1b[31m\n.png"), "-c", coll)
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "\x1b" not in res.stderr


def test_non_utf8_indexed_folder_needs_a_utf8_collection_path(tmp_path, tiny_encoder):
    raw_root = os.fsencode(tmp_path) + b"/r\xe9sum\xe9"
    os.makedirs(raw_root)
    root = Path(os.fsdecode(raw_root))
    make_images(root, 2)
    with pytest.raises(CollectionError, match="not valid UTF-8"):
        _index(root, tiny_encoder)  # DIR/.vlmsearch: Arrow cannot open that path
    coll = Collection.index(root, tmp_path / "coll", encoder=tiny_encoder,
                            options=IngestOptions(workers=0))  # fmt: skip
    hit = coll.search("red", k=1)[0]
    assert os.path.isfile(hit.path) and hit.to_dict()["path"].startswith(
        str(tmp_path) + "/r\\xe9sum\\xe9/"
    )
    res = _cli("info", str(tmp_path / "coll"), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["root"].endswith("r\\xe9sum\\xe9")
