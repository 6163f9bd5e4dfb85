"""Stored expected output ("snapshots") and a readable diff when the output moves.

``VLMSEARCH_UPDATE_SNAPSHOTS=1 python -m pytest -q tests/cli/test_snapshots.py`` rewrites
the stored files instead of comparing; review the change with ``git diff`` and commit it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
UPDATE_ENV = "VLMSEARCH_UPDATE_SNAPSHOTS"


def updating() -> bool:
    return os.environ.get(UPDATE_ENV, "") not in ("", "0")


def check(name: str, actual: str) -> None:
    """Compare ``actual`` with ``snapshots/NAME`` (or write it when updating)."""
    path = SNAPSHOTS / name
    if updating():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.is_file():
        raise AssertionError(
            f"no snapshot {path.relative_to(SNAPSHOTS.parent)}; create it with "
            f"{UPDATE_ENV}=1 python -m pytest -q tests/cli/test_snapshots.py"
        )
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"snapshots/{name} (stored)",
                tofile=f"snapshots/{name} (now)",
            )
        )
        raise AssertionError(
            f"output differs from snapshots/{name}:\n{diff}\n"
            f"If the change is intended: {UPDATE_ENV}=1 python -m pytest -q "
            "tests/cli/test_snapshots.py, then review git diff."
        )
