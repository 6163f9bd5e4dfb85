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
    """Items per second, or seconds per item when slower than one a second (captions)."""

    # every other phase counts images
    UNITS = {
        "embed": "text",
        "train": "epoch",
        "caption": "caption",
        "video": "frame",
        "t2i": "text",  # eval retrieval: captions ranked
        "index": "query",  # eval index
    }

    def render(self, task: Any) -> Text:
        unit = self.UNITS.get(task.description.strip(), "img")
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"    -- {unit}/s", style="cyan")
        if speed < 1:
            return Text(f"{1 / speed:6.1f} s/{unit}", style="cyan")
        return Text(f"{speed:6.1f} {unit}/s", style="cyan")


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
