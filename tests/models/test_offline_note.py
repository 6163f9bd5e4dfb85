"""The offline-default note is said once, before the work, and not at all with -q."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_images


def _index(tmp_path: Path, folder: str, *extra: str) -> subprocess.CompletedProcess:
    root = tmp_path / folder
    make_images(root, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "HF_"))}
    env["HOME"] = str(tmp_path / "home")  # a fresh user: no CLIP weights cached
    return subprocess.run(
        ["vlmsearch", "index", str(root), "--workers", "0", *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def test_offline_default_note_comes_first_once_and_honours_quiet(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("sentence_transformers")
    r = _index(tmp_path, "a")
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert err.count("offline default") == 1, err
    assert err.index("offline default") < err.index("found 3 image files"), err
    q = _index(tmp_path, "b", "-q")
    assert q.returncode == 0, q.stderr
    assert "note:" not in q.stderr and "offline default" not in q.stderr, q.stderr
