"""Piped output: one table row per line however long the path, and --paths for xargs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import TINY, make_images


def _collection(tmp_path: Path) -> Path:
    root = tmp_path / ("a-rather-long-folder-name-" * 3) / "photos"
    make_images(root, 5, prefix="an-image-with-a-long-file-name-")
    r = subprocess.run(
        ["vlmsearch", "index", str(root), "--model", TINY, "--workers", "0", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return root / ".vlmsearch"


def _search(coll: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "60"}  # a narrow terminal width must not fold pipes
    return subprocess.run(
        ["vlmsearch", "search", "a red square", "-k", "3", "-c", str(coll), *extra],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_piped_table_has_one_line_per_row(tmp_path) -> None:
    coll = _collection(tmp_path)
    r = _search(coll)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout  # header + 3 rows
    assert lines[0].split() == ["rank", "score", "path"]
    for i, line in enumerate(lines[1:], start=1):
        rank, _score, path = line.split(maxsplit=2)
        assert rank == str(i)
        assert Path(path).is_file(), line
        assert line == line.rstrip()


def test_paths_prints_only_absolute_paths(tmp_path) -> None:
    coll = _collection(tmp_path)
    r = _search(coll, "--paths")
    assert r.returncode == 0, r.stderr
    paths = r.stdout.splitlines()
    assert len(paths) == 3
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
    both = _search(coll, "--paths", "--json")
    assert both.returncode == 1
    assert both.stderr.strip() == "error: choose one of --json, --csv and --paths"
