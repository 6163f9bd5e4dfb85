"""`--help` reads like a plain click CLI: no Python types, no braces, every short option has
a long name, and argument errors are caught before any model loads."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

COMMANDS = [
    [], ["index"], ["search"], ["classify"], ["info"], ["caption"], ["distill"], ["serve"],
    ["check"],
    ["asif"], ["asif", "anchors"], ["asif", "anchors", "build"], ["asif", "anchors", "info"],
]  # fmt: skip


def _help(args: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        ["vlmsearch", *args, "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "top")
def test_help_has_no_python_types_or_braces(args: list[str]) -> None:
    text = _help(args)
    assert not re.search(r"<(bool|str|int|float|path|list\[[^\]]*\])[^>]*>", text), text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    # every option row starts with a long name (caption's -k used to have none)
    for line in text.splitlines():
        m = re.match(r"^│\s+(-\w)\s", line)
        assert m is None, f"short option without a long name: {line.strip()}"


def test_usage_names_arguments_in_capitals() -> None:
    assert re.search(r"Usage: vlmsearch index \[OPTIONS\] PATHS\.\.\.", _help(["index"]))
    assert re.search(r"Usage: vlmsearch caption \[OPTIONS\] \[PATHS\]\.\.\.", _help(["caption"]))


def test_image_option_mentions_weights() -> None:
    text = _help(["search"])
    row = text[text.index("--image") : text.index("--negative ")]
    assert "0.5:" in row


def test_caption_missing_lm_folder_is_named(tmp_path) -> None:
    img = tmp_path / "x.png"
    from tests.conftest import draw_image

    draw_image(img, (200, 30, 30))
    r = subprocess.run(
        ["vlmsearch", "caption", str(img), "--lm", "./missing-dir"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip() == "error: language model folder './missing-dir' does not exist"
