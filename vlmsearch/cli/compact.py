"""``vlmsearch compact``: merge a collection's metadata segments into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.errors import CollectionError


@user_errors
def compact(
    collection: Annotated[
        Path | None,
        typer.Option("--collection", "-c", help="Collection directory (default: as for search)."),
    ] = None,
    if_due: Annotated[
        bool,
        typer.Option(
            "--if-due",
            help="Compact only past the threshold `vlmsearch index` uses (more than 64 "
            "metadata files, or deleted and replaced rows past half the live ones plus "
            "100,000).",
        ),
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Merge the metadata segments into one, dropping deleted and replaced rows, in one
    atomic commit (readers keep the state they opened). `vlmsearch index` does this by
    itself past the threshold; a format-1 collection is migrated to format 2."""
    from vlmsearch.storage.layout import Layout
    from vlmsearch.storage.locate import resolve_collection_path
    from vlmsearch.storage.maintenance import compact_collection

    layout = Layout(resolve_collection_path(collection))
    if not layout.path.is_dir():
        raise CollectionError(f"no collection at {layout.path}")
    report = compact_collection(layout, force=not if_due)
    if json_:
        output.emit_json(report)
    elif report["compacted"]:
        output.out.print(
            f"compacted: {report['files_before']} metadata files -> {report['files_after']}"
        )
    else:
        output.out.print(f"nothing to compact ({report['files_before']} metadata files)")
