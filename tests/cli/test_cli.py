"""The typer CLI through CliRunner, and once through the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY
from vlmsearch.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def indexed(image_dir):
    res = run("index", str(image_dir), "--model", TINY, "--workers", "0", "--quiet")
    assert res.exit_code == 0, res.output
    return image_dir


def test_index_json_report(image_dir):
    res = run("index", str(image_dir), "--model", TINY, "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["encoded"] == 15 and rep["errors"] == 0


def test_search_json_and_csv(indexed):
    coll = str(indexed / ".vlmsearch")
    res = run("search", "a red square", "-k", "3", "--collection", coll, "--json")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all({"rank", "score", "id", "path"} <= set(h) for h in hits)
    assert os.path.isfile(hits[0]["path"])
    res = run("search", "--image", hits[0]["path"], "-k", "1", "-c", coll, "--csv")
    assert res.exit_code == 0 and res.stdout.splitlines()[0].startswith("rank,score,id,path")
    assert hits[0]["path"] in res.stdout.splitlines()[1]
    res = run("search", "x", "-k", "50", "-c", coll, "--where", "path LIKE 'nested/%'", "--json")
    assert {h["relpath"].split("/")[0] for h in json.loads(res.stdout)} == {"nested"}


def test_collection_found_from_cwd(indexed, monkeypatch):
    monkeypatch.chdir(indexed / "nested")
    res = run("search", "anything", "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 2


def test_one_line_errors(indexed, tmp_path):
    coll = str(indexed / ".vlmsearch")
    cases = [
        (["search", "x", "-c", coll, "--where", "nosuchcol = 1"], "nosuchcol"),
        (["search", "x", "-c", str(tmp_path / "nothing")], "no collection"),
        (["search", "x", "-c", coll, "--model", "ViT-B-32"], "model mismatch"),
        (["search", "--image", str(tmp_path / "missing.jpg"), "-c", coll], "cannot read"),
        (["index", str(tmp_path / "missing-dir")], "no such file or folder"),
        (["classify", "--labels", "onlyone", "-c", coll], "at least two labels"),
    ]
    for args, needle in cases:
        res = run(*args)
        assert res.exit_code == 1, (args, res.output)
        assert needle in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_classify_write_column_then_filter(indexed):
    coll = str(indexed / ".vlmsearch")
    res = run(
        "classify",
        "--labels",
        "cat,dog,car",
        "-c",
        coll,
        "--write-column",
        "animal",
        "--templates",
        "simple",
        "--json",
    )
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)
    assert len(preds) == 15
    label = preds[0]["label"]
    want = sum(p["label"] == label for p in preds)
    res = run("search", "x", "-k", "100", "-c", coll, "--where", f"animal = '{label}'", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == want


def test_classify_paths_and_info(indexed, tmp_path):
    (indexed / "junk.jpg").write_bytes(b"junk")
    out = tmp_path / "preds.parquet"
    res = run(
        "classify",
        str(indexed / "img0000.png"),
        str(indexed / "junk.jpg"),
        "--labels",
        "red,blue",
        "--model",
        TINY,
        "--json",
        "--parquet",
        str(out),
    )
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)
    assert preds[0]["label"] in ("red", "blue") and preds[1]["error"]
    assert out.is_file()
    res = run("info", "-c", str(indexed / ".vlmsearch"), "--json")
    info = json.loads(res.stdout)
    assert info["counts"]["ok"] == 15 and info["index"]["factory"] == "Flat"
    assert info["encoder"]["arch"] == TINY


def test_console_script_subprocess(indexed):
    exe = shutil.which("vlmsearch")
    if exe is None:
        pytest.skip("console script not installed (pip install -e .)")
    res = subprocess.run(
        [exe, "search", "a green square", "-k", "2", "--json", "-c", str(indexed / ".vlmsearch")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 2
    bad = subprocess.run(
        [exe, "search", "x", "-c", "/nonexistent/coll"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error:")
    assert len(bad.stderr.strip().splitlines()) <= 3 and "Traceback" not in bad.stderr
