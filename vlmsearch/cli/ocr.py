"""``vlmsearch ocr``: read the text inside a collection's images with RapidOCR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors


@user_errors
def ocr(
    collection: Annotated[
        Path | None,
        typer.Option(
            "--collection",
            "-c",
            help="The collection (default: see `vlmsearch search --help`).",
        ),
    ] = None,
    where: Annotated[str | None, typer.Option(help="SQL filter: read only these rows.")] = None,
    write_column: Annotated[
        str,
        typer.Option(
            help="Store the text in this metadata column, each line's text, box and "
            "confidence (JSON) in COLUMN_lines. Resumable: rows read already are skipped."
        ),
    ] = "text",
    overwrite: Annotated[
        bool, typer.Option(help="Read rows that have text already again.")
    ] = False,
    max_side: Annotated[
        int,
        typer.Option(
            help="Scale images down to this many pixels on the longer side first (>= 32)."
        ),
    ] = 1600,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the text; store nothing.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Read the text inside stored images (OCR), to search it with --where or --text-column.

    The first run downloads nothing: the detection and recognition models ship with
    rapidocr-onnxruntime (vlmsearch's ocr extra). About a second or two per image on
    a CPU; Ctrl-C keeps what is done and the next run resumes.
    """
    from vlmsearch.models.ocr import OcrEngine, check_available

    engine = OcrEngine(max_side)  # bad settings fail before any work
    check_available()
    rows = run_ocr(collection, where, None if dry_run else write_column, overwrite, engine, json_)
    if json_:
        output.emit_json(rows)
        return
    output.path_lines(rows, lambda r: " | ".join(ln["text"] for ln in r["lines"]) or "(no text)")


def run_ocr(
    collection: Path | Any | None,
    where: str | None,
    write_column: str | None,
    overwrite: bool,
    engine: Any,
    quiet: bool,
) -> list[dict[str, Any]]:
    """OCR a collection's rows (a path, or an open :class:`Collection`) with a progress bar;
    also what ``index --ocr`` runs after its commit."""
    from vlmsearch.cli.progress import ingest_progress
    from vlmsearch.cli.which import open_collection

    coll = collection
    if coll is None or isinstance(coll, Path):
        coll = open_collection(coll, None, "reading text in")
    targets = coll.caption_targets(where, write_column, overwrite, kind="ocr")  # checks first
    if len(targets) == 0:
        output.err.print(
            "nothing to read: "
            + ("every selected row has text (--overwrite reads them again)"
               if write_column else "no stored image matches")
        )  # fmt: skip
        return []
    with ingest_progress(quiet) as progress:
        done = coll.ocr(engine, write_column=write_column, progress=progress, ids=targets)
    if write_column and not quiet:
        found = sum(1 for r in done if r.text)
        unread = sum(1 for r in done if r.text is None)
        files = "1 file" if unread == 1 else f"{unread} files"
        left = f"; {files} could not be read (the next run tries again)"
        output.err.print(
            f"{len(done) - unread} images read, {found} with text; stored in column "
            f"{write_column!r} (lines in {write_column + '_lines'!r})" + (left if unread else "")
        )
    return [r.to_dict() for r in done]


def check_ocr_column(write_column: str) -> None:
    """For ``index --ocr``: refuse a bad column name or a missing extra before indexing."""
    from vlmsearch.models.ocr import check_available
    from vlmsearch.storage.metadata import check_column_name

    check_available()
    check_column_name(write_column)
