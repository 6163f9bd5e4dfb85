"""CLI snapshot tests: the stored ``--help`` of every command and one small search.

The help is rendered as ``docs/cli.md`` renders it (:mod:`vlmsearch.cli.reference`: 100
columns, no colour). The search runs the tiny random-init model on a few drawn images, so
its ranking is fixed run to run; scores are rounded to 3 decimals. Set
``VLMSEARCH_UPDATE_SNAPSHOTS=1`` to rewrite the snapshots after an intended change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import snapshot
from tests.cli_helpers import ok, run
from tests.conftest import TINY, make_images
from vlmsearch.cli import reference

COMMANDS = reference.commands()


def help_snapshot_name(path: tuple[str, ...]) -> str:
    return "help-" + "-".join(("vlmsearch", *path)) + ".txt"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "vlmsearch")
def test_help_snapshot(path: tuple[str, ...]) -> None:
    snapshot.check(help_snapshot_name(path), reference.help_text(path))


def test_every_help_snapshot_has_a_command() -> None:
    """A snapshot left behind by a removed or renamed command is an error, not dead weight."""
    wanted = {help_snapshot_name(p) for p in COMMANDS}
    stored = {p.name for p in snapshot.SNAPSHOTS.glob("help-*.txt")}
    if snapshot.updating():
        for name in stored - wanted:
            (snapshot.SNAPSHOTS / name).unlink()
        return
    assert stored == wanted, (
        f"snapshots without a command: {sorted(stored - wanted)}; "
        f"commands without a snapshot: {sorted(wanted - stored)}"
    )


def render_hits(hits: list[dict]) -> str:
    """The stable part of ``search --json``: rank, score to 3 decimals, relative path, size."""
    lines = ["rank  score  relpath  width x height"]
    for h in hits:
        lines.append(
            f"{h['rank']:>4}  {h['score']:+.3f}  {h['relpath']}  {h['width']} x {h['height']}"
        )
    return "\n".join(lines) + "\n"


def test_search_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_images(root, 6)
    ok(run("index", root, "--model", TINY, "--workers", 0, "--quiet"))
    res = run("search", "a red square", "-k", 4, "-c", root, "--json")
    ok(res)
    snapshot.check("search-tiny.txt", render_hits(json.loads(res.stdout)))
