"""``vlmsearch search``: text, image and mixed queries, optionally reranked.

The command function is over 80 lines: the signature is the option list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import (
    CollectionOpt,
    CsvOpt,
    DeviceOpt,
    JsonOpt,
    choose_format,
    reranker_options,
)
from vlmsearch.cli.outpaths import check_outside_root, check_page_file, write_output
from vlmsearch.cli.which import open_collection
from vlmsearch.errors import VlmsearchError


@user_errors
def search(
    query: Annotated[
        list[str] | None,
        typer.Argument(help="Text query; several are summed. Weight with a prefix: '2:a dog'."),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            "-i",
            help="Query image path (repeatable). Weight with a prefix: '0.5:cat.jpg'.",
        ),
    ] = None,
    negative: Annotated[
        list[str] | None, typer.Option("--negative", "-n", help="Text to move away from.")
    ] = None,
    negative_image: Annotated[
        list[str] | None, typer.Option("--negative-image", help="Image to move away from.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Number of results.")] = 10,
    where: Annotated[
        str | None,
        typer.Option(help='SQL boolean over metadata columns, e.g. "width >= 1024".'),
    ] = None,
    dedupe: Annotated[
        bool,
        typer.Option(
            help="Collapse near-duplicates (cosine >= 0.94, as clip-retrieval), keeping the "
            "best-ranked of each group; k results remain."
        ),
    ] = False,
    all_frames: Annotated[
        bool,
        typer.Option(
            help="Videos (index --video): list every matching frame; by default each "
            "video shows only its best frame."
        ),
    ] = False,
    collection: CollectionOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Must match the collection's model.")
    ] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists to visit (per query).")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW efSearch (per query).")] = None,
    text_column: Annotated[
        str | None,
        typer.Option(help="Search this text column (e.g. captions) by embedding."),
    ] = None,
    text_weight: Annotated[
        float,
        typer.Option(
            help="With --text-column: weight w of the text score in "
            "w*text + (1-w)*image; 1 searches the text alone."
        ),
    ] = 1.0,
    rerank: Annotated[
        str | None,
        typer.Option(
            help="Rescore the top hits: region[:teacher|student], coca:MODEL, vqa:MODEL, itm:MODEL."
        ),
    ] = None,
    rerank_top: Annotated[
        int | None,
        typer.Option(
            help="How many first-stage hits to rerank. Default 50; 10 for region reranking "
            "with the teacher on a CPU (no `vlmsearch distill` student)."
        ),
    ] = None,
    fusion: Annotated[
        float | None,
        typer.Option(
            help="Final score = w*rerank + (1-w)*first stage, both min-max scaled over the "
            "reranked hits. Default: the reranker's score alone."
        ),
    ] = None,
    rerank_option: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE for the reranker (repeatable), e.g. whole_weight=0.3, "
            "boxes=detections.json, normalize=true, batch_size=8."
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(help="Keep only hits scoring at least this (a relevance cut-off)."),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            help="Order the hits kept by a metadata column, e.g. taken_at; -taken_at for "
            "newest first. Ties keep relevance order; nulls last."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
    csv_: CsvOpt = False,
    paths_only: Annotated[
        bool, typer.Option("--paths", help="Print only the paths, one per line (for xargs).")
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained contact sheet (HTML) here."),
    ] = None,
) -> None:
    """Search a collection by text, image, or a weighted mix with negatives."""
    fmt = choose_format(json_, csv_, paths_only)
    if k < 1:
        raise VlmsearchError(f"-k must be at least 1 (got {k})")
    html = check_page_file(html, "--html")
    coll = open_collection(collection, device, "searching")
    check_outside_root(html, "--html", coll.root)
    if model:
        coll.check_model(model)
    from vlmsearch.cli.progress import ingest_progress

    # a bar only when reranking many hits: a plain search prints nothing but its results
    quiet = fmt != "table" or rerank is None or (rerank_top is not None and rerank_top < 20)
    coll.on_notice = lambda note: output.note(note, "yellow")
    with ingest_progress(quiet) as progress:
        hits = coll.search(
            query or None,
            k=k,
            where=where,
            image=image,
            negative=negative,
            negative_image=negative_image,
            params=_index_params(nprobe, ef_search),
            text_column=text_column,
            text_weight=text_weight,
            rerank=rerank,
            rerank_top=rerank_top,
            fusion=fusion,
            rerank_options=reranker_options(rerank_option),
            progress=progress,
            min_score=min_score,
            sort=sort,
            dedupe=dedupe,
            all_frames=all_frames,
        )
    _print_notes(coll, fmt)
    if html is not None:
        _write_sheet(html, hits, coll, query, image, where)
    if fmt == "paths":
        output.paths(hits)
    else:
        output.hits(hits, fmt, text_column)


def _index_params(nprobe: int | None, ef_search: int | None) -> dict[str, int]:
    """FAISS search parameters from --nprobe and --ef-search (those given, not zero)."""
    params = {}
    if nprobe:
        params["nprobe"] = nprobe
    if ef_search:
        params["efSearch"] = ef_search
    return params


def _print_notes(coll: Any, fmt: str) -> None:
    """The search's notes, and (for a table) a warning when the stored index is stale."""
    for note in coll.notices:
        output.note(note, "yellow")
    if coll.index_is_stale and fmt == "table":
        output.err.print(
            "[yellow]note:[/yellow] the stored index is behind the data (an interrupted index "
            "run?); searched exactly in memory. Run `vlmsearch index` to finish it."
        )


def _write_sheet(
    html: Path,
    hits: list[Any],
    coll: Any,
    query: list[str] | None,
    image: list[str] | None,
    where: str | None,
) -> None:
    """Write the ``--html`` contact sheet of ``hits`` and say so on stderr."""
    from vlmsearch.imaging import contact_sheet

    what = " + ".join([*(query or []), *(f"image {i}" for i in image or [])])
    page = contact_sheet.search_sheet(
        hits,
        f"vlmsearch: {what}",
        contact_sheet.thumbnailer(coll.path),
        meta=f"{len(hits)} results from {coll.root}" + (f" where {where}" if where else ""),
    )
    written = write_output(html, "--html", lambda p: contact_sheet.write(p, page))
    output.err.print(f"wrote {output.text(written)} ({len(hits)} images)")
