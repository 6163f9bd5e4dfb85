"""Output paths (issue 15, item 2): a bad ``--html`` / ``--parquet`` is one line before any
work, and a failed write leaves nothing of the command behind (no label columns)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import one_line_error, run
from tests.conftest import TINY


@pytest.fixture
def coll(image_dir: Path) -> Path:
    res = run("index", image_dir, "--model", TINY, "--workers", "0", "-q")
    assert res.exit_code == 0, res.output
    return image_dir / ".vlmsearch"


def columns(coll: Path) -> list[str]:
    from vlmsearch import Collection

    return Collection.open(coll).table.column_names


def test_bad_output_paths_are_one_line_before_any_work(
    coll: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vlmsearch.collection as collection_mod

    def no_work(*a, **k):
        raise AssertionError("the command worked before checking its output path")

    missing = tmp_path / "nonexistent" / "dir"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with monkeypatch.context() as mp:
        mp.setattr(collection_mod.Collection, "search", no_work)
        mp.setattr(collection_mod.Collection, "classify", no_work)
        mp.setattr(collection_mod, "classify_files", no_work)
        res = run("search", "a red square", "-c", coll, "--html", missing / "x.html")
        one_line_error(res, "--html", "does not exist")
        res = run("search", "a red square", "-c", coll, "--html", folder)
        one_line_error(res, "--html", "is a folder")
        res = run(
            "classify", "-c", coll, "--labels", "red,blue", "--write-column", "q",
            "--parquet", missing / "x.parquet",
        )  # fmt: skip
        one_line_error(res, "--parquet", "does not exist")
        img = next(coll.parent.glob("*.png"))
        res = run(
            "classify", img, "--labels", "red,blue", "--model", TINY,
            "--parquet", missing / "x.parquet",
        )  # fmt: skip
        one_line_error(res, "--parquet", "does not exist")
        res = run("classify", img, "--labels", "red,blue", "--model", TINY, "--html", folder)
        one_line_error(res, "--html", "is a folder")
    assert "q" not in columns(coll) and not missing.exists()


def test_failed_write_leaves_no_label_columns(
    coll: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are written before the columns are committed: when writing one fails
    (disk full, a folder removed meanwhile), the collection is as it was."""
    import pyarrow.parquet as pq

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    out = tmp_path / "x.parquet"
    with monkeypatch.context() as mp:
        mp.setattr(pq, "write_table", disk_full)
        res = run(
            "classify", "-c", coll, "--labels", "red,blue", "--write-column", "q",
            "--parquet", out, "--templates", "simple",
        )  # fmt: skip
    one_line_error(res, "--parquet", "no space left on device")
    assert "q" not in columns(coll) and "q_score" not in columns(coll)
    assert not out.exists() and not list(tmp_path.glob(".x.parquet*"))

    # and with the outputs written, the columns follow
    res = run(
        "classify", "-c", coll, "--labels", "red,blue", "--write-column", "q",
        "--parquet", out, "--templates", "simple", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)
    assert {"q", "q_score"} <= set(columns(coll))
    assert pq.read_table(out).num_rows == len(preds) == 15
