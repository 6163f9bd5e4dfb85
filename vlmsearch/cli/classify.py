"""``vlmsearch classify``: zero-shot labels for image files or a collection's vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import (
    DEFAULT_MODEL,
    CollectionOpt,
    CsvOpt,
    DeviceOpt,
    JsonOpt,
    choose_format,
)
from vlmsearch.cli.outpaths import (
    check_output_file,
    check_outside_root,
    check_page_file,
    write_output,
)
from vlmsearch.cli.which import open_collection
from vlmsearch.errors import VlmsearchError


@user_errors
def classify(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Images or folders to classify (encoded now).")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels.")] = None,
    labels_file: Annotated[Path | None, typer.Option(help="One label per line.")] = None,
    templates: Annotated[
        str, typer.Option(help="openai (CLIP's 80), simple (7), or a file of lines with {}.")
    ] = "openai",
    top_k: Annotated[int, typer.Option(min=1, help="Labels to report per image.")] = 1,
    rule: Annotated[
        str,
        typer.Option(
            help="How prompts combine: mean (CLIP: averaged prompt embeddings) or best "
            "(ASIF paper: the best single prompt)."
        ),
    ] = "mean",
    collection: CollectionOpt = None,
    where: Annotated[str | None, typer.Option(help="With --collection: SQL filter.")] = None,
    write_column: Annotated[
        str | None,
        typer.Option(help="Store label and score as metadata columns NAME and NAME_score."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help=f"For PATHS: an open_clip model or asif[:ANCHORS]. Default {DEFAULT_MODEL}, "
            "or the offline ASIF default when its weights cannot be loaded (as for index).",
        ),
    ] = None,
    parquet: Annotated[Path | None, typer.Option(help="Also write results as Parquet.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = 64,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
    csv_: CsvOpt = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a contact sheet grouped by label (HTML) here."),
    ] = None,
) -> None:
    """Zero-shot classification from label text, of PATHS or of a collection's stored vectors."""
    from vlmsearch.models.zeroshot import parse_labels

    fmt = choose_format(json_, csv_)
    label_list = parse_labels(labels, str(labels_file) if labels_file else None)
    if paths and (collection or write_column or where):
        raise VlmsearchError("give PATHS or --collection (with --where/--write-column), not both")
    html = check_page_file(html, "--html")
    parquet = check_output_file(parquet, "--parquet")
    coll = None
    if paths:
        how = dict(model=model, templates=templates, top_k=top_k, rule=rule)
        preds = _classify_files(paths, label_list, how, batch_size, device)
    else:
        coll = open_collection(collection, device, "classifying")
        check_outside_root(html, "--html", coll.root)
        if write_column:
            coll.check_label_column(write_column)
        if model:
            coll.check_model(model)
        # the columns are written last, after the files: a failed write leaves neither
        preds = coll.classify(label_list, templates=templates, top_k=top_k, where=where, rule=rule)
    if html is not None:
        where_from = None if coll is None else coll.path
        _write_sheet(html, preds, label_list, templates, rule, where_from)
    if parquet:
        _write_parquet(parquet, preds)
    if write_column:
        _write_columns(coll, write_column, preds, label_list, templates, fmt)
    output.predictions(preds, fmt)


def _classify_files(
    paths: list[Path], label_list: list[str], how: dict[str, Any], batch_size: int, device: str
) -> list[Any]:
    """Encode and classify image files (``how``: model, templates, top_k, rule); the
    notes on the model chosen go to stderr."""
    from vlmsearch.collection import classify_files

    notices: list[str] = []
    preds = classify_files(
        paths, label_list, batch_size=batch_size, device=device, notices=notices, **how
    )
    for note in notices:
        output.note(note)
    return preds


def _write_sheet(
    html: Path,
    preds: list[Any],
    label_list: list[str],
    templates: str,
    rule: str,
    collection: Path | None,
) -> None:
    """Write the ``--html`` contact sheet, grouped by label, and say so on stderr;
    thumbnails come from ``collection``'s cache, if any."""
    from vlmsearch.imaging import contact_sheet

    page = contact_sheet.classify_sheet(
        preds,
        label_list,
        "vlmsearch: " + ", ".join(label_list),
        contact_sheet.thumbnailer(collection),
        meta=f"{len(preds)} images, templates {templates}, rule {rule}",
    )
    written = write_output(html, "--html", lambda p: contact_sheet.write(p, page))
    output.err.print(f"wrote {output.text(written)} ({len(preds)} images)")


def _write_parquet(parquet: Path, preds: list[Any]) -> None:
    """Write the predictions as a Parquet table (``top`` as a list of labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**p.to_dict(), "top": [t["label"] for t in p.to_dict()["top"]]} for p in preds]
    table = pa.Table.from_pylist(rows)
    from vlmsearch.storage.atomic import atomic_write

    write_output(
        parquet, "--parquet", lambda p: atomic_write(p, lambda t: pq.write_table(table, t))
    )


def _write_columns(
    coll: Any, column: str, preds: list[Any], label_list: list[str], templates: str, fmt: str
) -> None:
    """Store the labels in metadata columns ``column`` and ``column_score``; a table run
    says how to filter on them."""
    coll.write_predictions(column, preds, label_list, templates)
    if fmt == "table":
        output.err.print(
            output.text(
                f"wrote columns {column!r} and {column + '_score'!r}; filter "
                f"with --where \"{column} = '{label_list[0]}'\""
            )
        )
