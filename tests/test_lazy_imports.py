"""`vlmsearch --help` must not import the heavy libraries (issue 6: --help under 0.5 s).

Behaviour, not timing: a fresh interpreter runs the CLI's help and reports which heavy
modules ended up in sys.modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vlmsearch

HEAVY = ("torch", "faiss", "duckdb", "open_clip", "pyarrow", "numpy", "transformers", "PIL")
REPO = Path(vlmsearch.__file__).resolve().parent.parent

CHILD = """
import json, sys
from vlmsearch.cli.app import main
sys.argv = ["vlmsearch", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["search", "--help"], ["index", "--help"], ["--version"]]
)
def test_help_imports_no_heavy_library(argv):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_python_dash_m_runs_the_cli():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-m", "vlmsearch", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == f"vlmsearch {vlmsearch.__version__}"
