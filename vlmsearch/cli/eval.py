"""``vlmsearch eval ...``: measure retrieval, zero-shot accuracy and the ANN index on the
user's own collection (the work: :mod:`vlmsearch.search.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import CollectionOpt, DeviceOpt, JsonOpt
from vlmsearch.cli.outpaths import check_outside_root, check_page_file, write_output
from vlmsearch.cli.which import open_collection
from vlmsearch.errors import QueryError

eval_app = typer.Typer(
    help="Measure search quality on your own collection: retrieval, zero-shot accuracy, "
    "the ANN index.",
    no_args_is_help=True,
)

HtmlOpt = Annotated[
    Path | None,
    typer.Option("--html", help="Also write a report of the worst misses (HTML, thumbnails)."),
]
TemplatesOpt = Annotated[
    str, typer.Option(help="openai (CLIP's 80), simple (7), or a file of lines with {}.")
]


@eval_app.command("retrieval")
@user_errors
def retrieval(
    captions: Annotated[
        Path,
        typer.Option(
            help="CSV, Parquet or JSON-lines file with columns path (relative to the "
            "collection's folder, or absolute) and caption; several captions per image allowed."
        ),
    ],
    collection: CollectionOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
    html: HtmlOpt = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Also fit a score calibration on these pairs and store it in the "
            "collection: text searches then score 0-1 as the chance of a match, and "
            "--min-score means that (the raw similarity stays in --json as raw_score).",
        ),
    ] = False,
) -> None:
    """Text->image and image->text R@1/5/10 and median rank on captioned images."""
    from vlmsearch.search.evaluate.retrieval import read_captions

    html = check_page_file(html, "--html")
    read_captions(captions)  # a bad file fails before the collection is opened
    coll = open_collection(collection, device, "evaluating")
    check_outside_root(html, "--html", coll.root)
    report = _run(json_, lambda progress: coll.eval_retrieval(captions, progress, calibrate))
    _finish(report, coll, html, json_)


@eval_app.command("classify")
@user_errors
def classify(
    labels_from: Annotated[
        str | None, typer.Option(help="Metadata column holding each image's true label.")
    ] = None,
    labels_from_path: Annotated[
        str | None,
        typer.Option(
            help="Regex whose first group in each path is its label, underscores read as "
            "spaces, e.g. '_([a-z_ ]+)\\.' for n01440764_tench.JPEG."
        ),
    ] = None,
    templates: TemplatesOpt = "openai",
    rule: Annotated[
        str, typer.Option(help="How prompts combine: mean (CLIP) or best (ASIF paper).")
    ] = "mean",
    collection: CollectionOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
    html: HtmlOpt = None,
) -> None:
    """Zero-shot top-1/top-5 accuracy over the distinct true labels, and the most
    confused pairs."""
    from vlmsearch.models.zeroshot import RULES, load_templates
    from vlmsearch.search.evaluate.classify_eval import check_label_source

    check_label_source(labels_from, labels_from_path)
    if rule not in RULES:
        raise QueryError(f"--rule {rule!r}: choose one of {', '.join(RULES)}")
    load_templates(templates)
    html = check_page_file(html, "--html")
    coll = open_collection(collection, device, "evaluating")
    check_outside_root(html, "--html", coll.root)
    report = _run(
        json_,
        lambda progress: coll.eval_classify(
            labels_from, labels_from_path, templates, rule, progress
        ),
    )
    _finish(report, coll, html, json_)


@eval_app.command("index")
@user_errors
def index(
    queries: Annotated[int, typer.Option(help="Stored vectors sampled as queries.", min=1)] = 100,
    k: Annotated[int, typer.Option("-k", help="Recall depth.", min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists to visit (per query).")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW efSearch (per query).")] = None,
    collection: CollectionOpt = None,
    json_: JsonOpt = False,
    html: HtmlOpt = None,
) -> None:
    """Recall@k of the ANN index against an exact scan of the same vectors, and its
    p50/p95 latency per query."""
    params = {n: v for n, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v}
    html = check_page_file(html, "--html")
    coll = open_collection(collection, None, "evaluating")
    check_outside_root(html, "--html", coll.root)
    report = _run(json_, lambda progress: coll.eval_index(queries, k, seed, params, progress))
    _finish(report, coll, html, json_)


def _run(quiet: bool, work: Any) -> Any:
    """``work(progress)`` under a progress bar on stderr (none for --json)."""
    from vlmsearch.cli.progress import ingest_progress

    with ingest_progress(quiet) as progress:
        return work(progress)


def _finish(report: Any, coll: Any, html: Path | None, json_: bool) -> None:
    """Write the ``--html`` page, then print the report (JSON, or a table and notes)."""
    if html is not None:
        _write_sheet(html, report, coll)
    if json_:
        output.emit_json(report.to_dict())
        return
    output.mapping({k: _cell(v) for k, v in report.metrics.items()}, f"eval {report.kind}")
    for note in report.notes:
        output.note(note)
    cal = report.metrics.get("calibration")
    if cal:
        output.note(
            f"calibration stored: score = 1 / (1 + exp(-({cal['a']:.4g} * raw "
            f"{'-' if cal['b'] < 0 else '+'} {abs(cal['b']):.4g})))"
            " for text searches of this collection"
        )


def _cell(value: Any) -> Any:
    """A metric as table text: 3 decimals, a section on one line, a list one per item."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return "  ".join(f"{k} {_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return "; ".join(_item(item) for item in value) or "-"
    return value


def _item(item: dict[str, Any]) -> str:
    """A confused pair as ``true -> predicted (count)``, a class as ``label top1 (images)``."""
    if "predicted" in item:
        return f"{item['true']} -> {item['predicted']} ({item['count']})"
    if "label" in item:
        return f"{item['label']} {item['top1']:.3f} ({item['images']})"
    return " ".join(str(_cell(v)) for v in item.values())


def _write_sheet(html: Path, report: Any, coll: Any) -> None:
    from vlmsearch.imaging import contact_sheet

    meta = ", ".join(f"{k} {_cell(v)}" for k, v in report.metrics.items() if _flat(v))
    page = contact_sheet.misses_sheet(
        report.misses,
        f"vlmsearch eval {report.kind}: worst misses",
        contact_sheet.thumbnailer(coll.path),
        f"{coll.root}: {meta}",
    )
    written = write_output(html, "--html", lambda p: contact_sheet.write(p, page))
    shown = sum(len(v) for v in report.misses.values())
    output.err.print(f"wrote {output.text(written)} ({shown} misses)")


def _flat(value: Any) -> bool:
    return not isinstance(value, dict | list)
