"""`vlmsearch index --memory-budget` sizes."""

from __future__ import annotations

import pytest
import typer

from vlmsearch.cli.index import _bytes


def test_memory_budget_sizes():
    assert _bytes(None) is None
    assert _bytes("4G") == 4 << 30
    assert _bytes("512m") == 512 << 20
    assert _bytes("1.5GiB") == int(1.5 * (1 << 30))
    assert _bytes("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(typer.BadParameter):
            _bytes(bad)
