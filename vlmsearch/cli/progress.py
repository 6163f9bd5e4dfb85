"""A rich progress bar (on stderr) with images/s and ETA, adapted to ingest callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from vlmsearch.cli.output import err


class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} img/s" if speed else "    -- img/s", style="cyan")


@contextlib.contextmanager
def ingest_progress(quiet: bool) -> Iterator[Any]:
    """Yield a ``progress(phase, advance, total)`` callback (a no-op when quiet)."""
    if quiet:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(phase: str, advance: int, total: int) -> None:
        if phase == "scan":
            err.print(f"found {total} image files")
            return
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], advance=advance, total=total)

    with bar:
        yield update
