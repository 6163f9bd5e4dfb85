"""``vlmsearch check [--repair]``: verify a collection's files, rebuild what can be rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.errors import CollectionError

_STYLE = {"ok": "green", "unverified": "yellow", "missing": "red", "damaged": "red"}


@user_errors
def check(
    collection: Annotated[
        Path | None,
        typer.Option("--collection", "-c", help="Collection directory (default: as for search)."),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            help="Rebuild what can be rebuilt without re-encoding (index, metadata) and drop "
            "what is lost, so that the next `vlmsearch index` encodes only that."
        ),
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Verify every file of a collection: present, of the recorded size and checksum, and
    readable. Exit status 1 while damage remains."""
    from vlmsearch.ingest import repair as rp
    from vlmsearch.storage.layout import Layout
    from vlmsearch.storage.locate import resolve_collection_path

    layout = Layout(resolve_collection_path(collection))
    if not layout.path.is_dir():
        raise CollectionError(f"no collection at {layout.path}")
    if repair:
        from vlmsearch.cli.progress import ingest_progress

        with ingest_progress(json_) as progress:  # rebuilding an index can take a while
            report = rp.repair(layout, progress)
    else:
        report = rp.check(layout)
    if json_:
        output.emit_json(report.to_dict())
    else:
        for f in report.files:
            style = _STYLE.get(f.status, "white")
            note = f": {output.text(f.problem)}" if f.problem else ""
            name = output.text(f.name)
            output.out.print(f"[{style}]{f.status:10}[/{style}] {f.kind:15} {name}{note}")
        for line in report.repaired:
            output.err.print(
                f"[bold yellow]repaired:[/bold yellow] {output.text(line)}", soft_wrap=True
            )
        if report.reencode:
            shown = ", ".join(report.reencode[:5]) + (" ..." if len(report.reencode) > 5 else "")
            output.err.print(
                f"[bold yellow]to re-encode:[/bold yellow] {len(report.reencode)} files "
                f"({output.text(shown)}): run `vlmsearch index FOLDER -c "
                f"{output.text(layout.path)}`"
            )
    if report.manifest_error:
        raise CollectionError(report.manifest_error)
    if not report.healthy:
        names = ", ".join(f.name for f in report.damaged)
        hint = "" if repair else f"; run `vlmsearch check --repair -c {layout.path}`"
        n = len(report.damaged)
        raise CollectionError(f"{n} damaged files in {layout.path}: {names}{hint}")
    if not json_:
        output.err.print(
            f"{output.text(layout.path)}: {len(report.files)} files intact", soft_wrap=True
        )
