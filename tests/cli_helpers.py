"""Running the CLI in-process (typer's CliRunner) and checking its one-line errors."""

from __future__ import annotations

from typer.testing import CliRunner

from vlmsearch.cli.app import app

runner = CliRunner()


def run(*args: object):
    """``vlmsearch ARGS...`` in this process; the arguments are str()-ed."""
    return runner.invoke(app, [str(a) for a in args])


def ok(res) -> None:
    assert res.exit_code == 0, res.output


def one_line_error(res, *needles: str) -> str:
    """Exit 1, a single 'error:' line on stderr, no traceback; returns the line."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
