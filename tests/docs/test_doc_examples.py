"""The Python examples of README.md and docs/*.md run as written, so they cannot drift.

Convention: every fenced ```python block runs, unless the line just above its opening
fence is an HTML comment giving the reason it does not, e.g.
``<!-- not run: needs a local open_clip checkpoint -->``. The blocks of one page run in
order in one interpreter and share their names, like a session at the prompt.

Each page runs in a subprocess, offline, as a new user would: a fresh HOME (shared by the
pages, so the model caches are built once), Hugging Face offline, and a working folder
holding ``photos/`` (the bundled sample photos, already indexed with the default model,
which falls back to the offline ASIF default) and ``my-gpt2/`` (a tiny local causal LM for
the caption examples). Each page gets its own copy of that folder, so what one page
writes (labels, captions) cannot change what another sees. Needs the [offline] extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_gpt2

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run(?P<colon>:)?\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the first line of code
    code: str
    skip_reason: str | None  # None: runs


def blocks(page: Path) -> list[Block]:
    """The ```python blocks of ``page``, each with the reason it is not run, if any."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang, indent = i, m["lang"], m["indent"]
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if lang == "python":
            prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            marker = NOT_RUN.match(prev)
            reason = None
            if marker:
                reason = marker["reason"]
                assert marker["colon"] and reason, (
                    f"{page.name}:{start}: a 'not run' marker must give its reason "
                    "(<!-- not run: why -->)"
                )
            code = "\n".join(ln[len(indent) :] for ln in lines[start + 1 : i])
            out.append(Block(page, start + 2, code, reason))
        i += 1
    return out


def runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.skip_reason is None for b in blocks(p))]


RUNNER = r"""
import json, sys
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for b in blocks:
    print(f"--- {b['file']}:{b['line']}", flush=True)
    source = "\n" * (b["line"] - 1) + b["code"]
    exec(compile(source, b["file"], "exec"), namespace)
"""


def clean_env(home: Path) -> dict[str, str]:
    """A new user's environment: no vlmsearch, XDG or Hugging Face settings, offline."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "VLMSEARCH_", "HF_", "TRANSFORMERS_"))
    }
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # this checkout's code, also when it is not the one installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(template folder with photos/ indexed and my-gpt2/, the shared HOME)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("sentence_transformers")
    base = tmp_path_factory.mktemp("doc-examples")
    home = base / "home"
    home.mkdir()
    template = base / "template"
    template.mkdir()
    from vlmsearch.samples import copy_samples

    copy_samples(template / "photos")
    words = "<eos> a an the cat dog sofa on photo of picture rocket coffee cup coins".split()
    model, tok = tiny_gpt2(words)
    model.save_pretrained(template / "my-gpt2")
    tok.save_pretrained(template / "my-gpt2")
    env = clean_env(home)
    env["XDG_STATE_HOME"] = str(base / "state")  # keep 'the last collection' out of the pages
    r = subprocess.run(
        [sys.executable, "-m", "vlmsearch", "index", "photos", "--quiet"],
        cwd=template, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return template, home


def test_pages_have_examples() -> None:
    """The parse finds the examples (a renamed fence would otherwise skip them silently)."""
    names = {p.name for p in runnable_pages()}
    assert {"README.md", "python-api.md", "captions.md", "server.md"} <= names, names


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: p.name)
def test_page_examples_run(page: Path, workspace: tuple[Path, Path], tmp_path: Path) -> None:
    template, home = workspace
    work = tmp_path / "work"
    shutil.copytree(template, work, symlinks=True)
    todo = [
        {"file": str(b.page), "line": b.line, "code": b.code}
        for b in blocks(page)
        if b.skip_reason is None
    ]
    (tmp_path / "blocks.json").write_text(json.dumps(todo), encoding="utf-8")
    (tmp_path / "runner.py").write_text(RUNNER, encoding="utf-8")
    env = clean_env(home)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    r = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "blocks.json")],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    rel = page.relative_to(REPO)
    assert r.returncode == 0, f"an example in {rel} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    assert "Traceback" not in r.stderr, r.stderr
