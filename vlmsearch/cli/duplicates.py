"""``vlmsearch duplicates``: groups of near-duplicate images from the stored vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import CollectionOpt, CsvOpt, JsonOpt, choose_format
from vlmsearch.cli.outpaths import check_outside_root, check_page_file, write_output
from vlmsearch.cli.which import open_collection

# with fewer vectors the work takes about a second: no bar
PROGRESS_MIN = 20_000


@user_errors
def duplicates(
    collection: CollectionOpt = None,
    threshold: Annotated[
        float,
        typer.Option(
            help="Cosine similarity at which two images are one, in (0, 1]. 0.94 is "
            "clip-retrieval's, for CLIP models; see docs/usage.md for ASIF."
        ),
    ] = 0.94,
    where: Annotated[
        str | None, typer.Option(help='Compare only the rows this SQL allows, e.g. "width > 64".')
    ] = None,
    json_: JsonOpt = False,
    csv_: CsvOpt = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a page of the groups (HTML, with thumbnails)."),
    ] = None,
) -> None:
    """Group near-duplicate images (resized, re-encoded, lightly edited copies) and suggest
    which to keep: the largest, then the oldest file. Nothing is deleted."""
    from vlmsearch.search.duplicates import check_threshold

    fmt = choose_format(json_, csv_)
    check_threshold(threshold)
    html = check_page_file(html, "--html")
    coll = open_collection(collection, None, "comparing")
    check_outside_root(html, "--html", coll.root)
    if coll.sparse:
        output.note(
            "ASIF vectors also join distinct images of one category (precision 0.89 at 0.94 "
            "on ImageNet images); check the groups, or index with a CLIP model"
        )
    from vlmsearch.cli.progress import ingest_progress

    with ingest_progress(fmt != "table" or len(coll) < PROGRESS_MIN) as progress:
        groups = coll.duplicates(threshold, where=where, progress=progress)
    if html is not None:
        _write_sheet(html, groups, coll, threshold, where)
    if fmt == "json":
        output.emit_json([g.to_dict() for g in groups])
    elif fmt == "csv":
        output.emit_csv(_flat(groups), ["group", "role", "id", "path", "similarity"])
    else:
        _table(groups)


def _flat(groups: list[Any]) -> list[dict[str, Any]]:
    """One row per image: its group number, keep or duplicate, and similarity to the keeper."""
    rows = []
    for n, g in enumerate(groups, start=1):
        rows.append(
            dict(group=n, role="keep", id=g.keeper, path=g.paths.get(g.keeper), similarity="")
        )
        for i, s in zip(g.others, g.similarity, strict=True):
            rows.append(
                dict(group=n, role="duplicate", id=i, path=g.paths.get(i), similarity=f"{s:.4f}")
            )
    return rows


def _table(groups: list[Any]) -> None:
    from rich.table import Table

    if not groups:
        output.err.print("no near-duplicates")
        return
    t = Table(show_edge=False, pad_edge=False, box=None)
    t.add_column("group", justify="right")
    t.add_column("", justify="left")
    t.add_column("similarity", justify="right")
    t.add_column("path", overflow="fold")
    labels = {i: g.label(i) for g in groups for i in g.ids}  # a frame: clip.mp4 @ 0:04.0
    for r in _flat(groups):
        t.add_row(str(r["group"]), r["role"], r["similarity"], output.text(labels[r["id"]]))
    output.print_table(t)
    output.err.print(summary(groups))


def summary(groups: list[Any]) -> str:
    """``2 groups, 3 images could go`` (``1 group, 1 image`` for one)."""
    dups = sum(len(g.others) for g in groups)
    return f"{_count(len(groups), 'group')}, {_count(dups, 'image')} could go"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _write_sheet(
    html: Path, groups: list[Any], coll: Any, threshold: float, where: str | None
) -> None:
    from vlmsearch.imaging import contact_sheet

    meta = f"{summary(groups)}; cosine >= {threshold} in {coll.root}"
    page = contact_sheet.duplicates_sheet(
        groups,
        "vlmsearch: near-duplicates",
        contact_sheet.thumbnailer(coll.path),
        meta + (f" where {where}" if where else ""),
    )
    written = write_output(html, "--html", lambda p: contact_sheet.write(p, page))
    output.err.print(f"wrote {output.text(written)} ({_count(len(groups), 'group')})")
