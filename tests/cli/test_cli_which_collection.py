"""A command that was not told which collection to use says on stderr which one it used."""

from __future__ import annotations

import subprocess

from tests.conftest import TINY, make_images


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["vlmsearch", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_implicit_collection_is_named_on_stderr(tmp_path) -> None:
    root = tmp_path / "photos"
    make_images(root, 4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _run(["index", str(root), "--model", TINY, "--workers", "0", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    coll = root / ".vlmsearch"

    r = _run(["search", "a red square", "-k", "1"], elsewhere)
    assert r.returncode == 0, r.stderr
    assert f"searching {coll} (the collection indexed last; -c chooses another)" in r.stderr

    r = _run(["search", "a red square", "-k", "1"], root)
    assert f"searching {coll} (the nearest .vlmsearch folder" in r.stderr

    r = _run(["classify", "--labels", "red,blue"], elsewhere)
    assert r.returncode == 0, r.stderr
    assert f"classifying {coll} (the collection indexed last" in r.stderr

    r = _run(["search", "a red square", "-k", "1", "-c", str(coll)], elsewhere)
    assert r.returncode == 0 and "searching" not in r.stderr, r.stderr
    assert r.stdout.count("\n") >= 2  # the results still go to stdout
