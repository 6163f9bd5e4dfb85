"""docs/cli.md is generated from the typer app (vlmsearch.cli.reference); a change to any
command's help that is not regenerated into the docs fails here."""

from __future__ import annotations

import difflib
from pathlib import Path

from vlmsearch.cli import reference

CLI_MD = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    expected = reference.render()
    current = CLI_MD.read_text(encoding="utf-8") if CLI_MD.is_file() else ""
    if current != expected:
        diff = "".join(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile="docs/cli.md",
                tofile="generated",
                n=1,
            )
        )
        raise AssertionError(f"docs/cli.md is stale: run {reference.REGENERATE}\n{diff[:4000]}")


def test_cli_reference_covers_every_command() -> None:
    text = CLI_MD.read_text(encoding="utf-8")
    for path in reference.commands():
        assert f"## `{' '.join(('vlmsearch', *path))}`" in text, path
