"""The README's Quick tour, run top to bottom as a new user would: a fresh HOME, no
network, the default model (which falls back to the offline ASIF default), every command
exactly as written. Needs the [offline] extra (CI installs it)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import tiny_gpt2

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_tour_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick tour", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line)
    return commands


def write_tiny_gpt2(folder: Path) -> None:
    """A random tiny GPT-2 saved as a local LM folder (``--lm ./my-gpt2``)."""
    words = "<eos> a an the cat dog sofa on photo of picture rocket coffee cup coins".split()
    model, tok = tiny_gpt2(words)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_quick_tour_runs_offline_top_to_bottom(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("sentence_transformers")
    commands = quick_tour_commands()
    assert any(c.startswith("vlmsearch caption") for c in commands)  # the parse found them all
    write_tiny_gpt2(tmp_path / "my-gpt2")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "VLMSEARCH_", "HF_", "TRANSFORMERS_"))
    }
    env["HOME"] = str(home)  # a fresh user (this machine has no model hub)
    for command in commands:
        r = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, f"{command}\n{r.stderr}"
        assert "Traceback" not in r.stderr, f"{command}\n{r.stderr}"
    assert (tmp_path / "predictions.parquet").is_file()
    assert (tmp_path / "photos" / ".vlmsearch" / "manifest.json").is_file()
