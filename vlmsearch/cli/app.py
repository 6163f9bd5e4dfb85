"""``vlmsearch`` console script. Heavy imports happen inside commands so --help is fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch._version import __version__
from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.outpaths import check_output_file, write_output
from vlmsearch.cli.which import open_collection
from vlmsearch.errors import VlmsearchError

app = typer.Typer(
    name="vlmsearch",
    help="Search, classify and inspect image folders with vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_MODEL = "ViT-B-32/laion2b_s34b_b79k"  # same as models.encoders.openclip

CollectionOpt = Annotated[
    Path | None,
    typer.Option(
        "--collection",
        "-c",
        help="Collection directory. Default: $VLMSEARCH_COLLECTION, a .vlmsearch folder at "
        "or above the current directory, else the last one indexed.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]


def _fmt(json_: bool, csv_: bool = False, paths: bool = False) -> str:
    if json_ + csv_ + paths > 1:
        raise VlmsearchError("choose one of --json, --csv and --paths")
    return "json" if json_ else "csv" if csv_ else "paths" if paths else "table"


def _options(pairs: list[str] | None) -> dict[str, object]:
    """``KEY=VALUE`` strings to keyword options: numbers and true/false are converted."""
    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise VlmsearchError(f"reranker options are KEY=VALUE (got {pair!r})")
        value: object = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        out[key.strip()] = value
    return out


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vlmsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """vlmsearch: vision-language retrieval over local image folders."""


@app.command()
@user_errors
def index(
    directory: Annotated[Path, typer.Argument(help="Folder of images to index (recursively).")],
    collection: Annotated[
        Path | None,
        typer.Option("--collection", "-c", help="Collection directory. Default: DIR/.vlmsearch."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help=f"ARCH/PRETRAINED, ARCH:/path/to/checkpoint.pt, or asif[:ANCHORS] for ASIF. "
            f"Default: the collection's model, or {DEFAULT_MODEL} for a new collection.",
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Encoder kind: open_clip or asif. Default: the collection's, else open_clip "
            "(or the offline ASIF default when the CLIP weights cannot be loaded)."
        ),
    ] = None,
    anchors: Annotated[
        str | None,
        typer.Option(
            help="ASIF anchor set (implies --encoder asif); 'default' = prototype anchors "
            "of EfficientNet-Lite0 + MiniLM."
        ),
    ] = None,
    image_encoder: Annotated[
        str | None, typer.Option(help="ASIF image encoder. Default: the anchor set's.")
    ] = None,
    text_encoder: Annotated[
        str | None, typer.Option(help="ASIF text encoder. Default: the anchor set's.")
    ] = None,
    asif_k: Annotated[
        int | None, typer.Option(min=1, help="ASIF: anchors kept per input (default 800).")
    ] = None,
    asif_p: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="ASIF: power on similarities, both sides. Default: the anchor set's "
            "(prototype 2 image / 16 text, data 4).",
        ),
    ] = None,
    asif_p_image: Annotated[
        float | None, typer.Option(min=0.0, help="ASIF: power on the image side only.")
    ] = None,
    asif_p_text: Annotated[
        float | None, typer.Option(min=0.0, help="ASIF: power on the text side only.")
    ] = None,
    index_type: Annotated[
        str | None,
        typer.Option(
            "--index",
            help="auto, flat, hnsw, ivf, ivfpq or a FAISS factory string. Default: the "
            "collection's saved choice (auto for a new one); auto resets it.",
        ),
    ] = None,
    rebuild: Annotated[bool, typer.Option(help="Start over: re-encode every file.")] = False,
    repair: Annotated[
        bool, typer.Option(help="First repair a damaged collection (see `vlmsearch check`).")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = 64,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding processes.")] = None,
    ext: Annotated[
        str | None, typer.Option(help="Comma-separated extensions, e.g. jpg,png.")
    ] = None,
    hidden: Annotated[bool, typer.Option(help="Also index hidden files and folders.")] = False,
    commit_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N images.")] = 1024,
    fast_decode: Annotated[
        bool | None,
        typer.Option(
            "--fast-decode/--no-fast-decode",
            help="Decode large JPEGs at 1/2, 1/4 or 1/8 scale (JPEG draft mode, never below "
            "the model's input size): faster, embeddings drift slightly (recorded in the "
            "manifest). Default: the collection's setting, off for a new one.",
        ),
    ] = None,
    gpu_decode: Annotated[
        bool | None,
        typer.Option(
            "--gpu-decode/--no-gpu-decode",
            help="Decode JPEGs with nvJPEG and preprocess on the GPU. Default: on when the "
            "model runs on CUDA.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_: JsonOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep running: re-index whenever files arrive, change or go (Ctrl-C stops).",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.05, help="With --watch: seconds between scans.")
    ] = 2.0,
) -> None:
    """Embed every image under DIRECTORY, incrementally (new, changed and deleted files)."""
    from vlmsearch.cli.progress import ingest_progress
    from vlmsearch.collection import Collection
    from vlmsearch.ingest.options import IngestOptions

    opts = IngestOptions(
        index=index_type,
        rebuild=rebuild,
        repair=repair,
        batch_size=batch_size,
        workers=workers,
        extensions=tuple(ext.split(",")) if ext else None,
        include_hidden=hidden,
        commit_every=commit_every,
        fast_decode=fast_decode,
        gpu_decode=gpu_decode,
    )
    enc_opts: dict[str, Any] = {
        k: v
        for k, v in (
            ("k", asif_k),
            ("p", asif_p),
            ("p_image", asif_p_image),
            ("p_text", asif_p_text),
            ("image_encoder", image_encoder),
            ("text_encoder", text_encoder),
        )
        if v is not None
    }
    if anchors is not None or enc_opts:
        if encoder not in (None, "asif"):
            raise VlmsearchError(
                "--anchors, --image-encoder, --text-encoder and the --asif-* options are for "
                "ASIF; they need --encoder asif"
            )
        if anchors is not None and model is not None:
            raise VlmsearchError("give the anchor set with --anchors or --model, not both")
        encoder, model = "asif", anchors if anchors is not None else model
    if watch:
        args = (model, encoder, opts, device, enc_opts, quiet, json_, interval)
        _watch(directory, collection, *args)
        return
    shown: list[str] = []

    def notice(note: str) -> None:  # before the progress bars; none with -q
        shown.append(note)
        if not quiet:
            _print_note(note)

    with ingest_progress(quiet or json_) as progress:
        coll = Collection.index(
            directory,
            collection,
            model=model,
            encoder_kind=encoder,
            options=opts,
            progress=progress,
            device=device,
            encoder_options=enc_opts,
            on_notice=notice,
        )
    rep = coll.last_report
    assert rep is not None
    _report(coll, rep, quiet, json_, shown)


def _watch(
    directory: Path,
    collection: Path | None,
    model: str | None,
    encoder: str | None,
    opts: Any,
    device: str,
    enc_opts: dict[str, Any],
    quiet: bool,
    json_: bool,
    interval: float,
) -> None:
    """``index --watch``: one line (or one JSON object) per update, until Ctrl-C."""
    import json

    from vlmsearch.ingest.watch import watch

    def on_report(rep: Any) -> None:
        if json_:
            print(json.dumps(rep.to_dict(), default=str), flush=True)
        elif not quiet:
            output.err.print(
                f"generation {rep.generation}: {rep.new} new, {rep.changed} changed, {rep.deleted} "
                f"deleted, {rep.unchanged} unchanged; {rep.encoded} encoded, {rep.errors} errors"
            )

    def on_error(e: Exception) -> None:
        output.err.print(f"[yellow]note:[/yellow] {output.text(e)}; retrying", soft_wrap=True)

    if not quiet and not json_:
        output.err.print(f"watching {output.text(directory)} every {interval:g}s; Ctrl-C stops")
    watch(
        directory,
        collection,
        interval=interval,
        on_report=on_report,
        on_error=on_error,
        model=model,
        encoder_kind=encoder,
        options=opts,
        device=device,
        encoder_options=enc_opts,
    )


def _print_note(note: str) -> None:
    output.err.print(f"[bold yellow]note:[/bold yellow] {output.text(note)}", soft_wrap=True)


def _report(
    coll: Any, rep: Any, quiet: bool, json_: bool, shown: list[str] | None = None
) -> None:
    for note in rep.notices if not quiet else ():
        if note not in (shown or []):
            _print_note(note)
    if json_:
        output.emit_json(rep.to_dict())
        return
    if not quiet:
        name = coll.manifest["encoder"].get("name")
        output.err.print(
            f"[bold]{output.text(coll.path)}[/bold]: {rep.scanned} files scanned, {rep.new} new, "
            f"{rep.changed} changed, {rep.deleted} deleted, {rep.unchanged} unchanged; "
            f"{rep.encoded} encoded ({rep.images_per_second:.1f} img/s), {rep.errors} errors; "
            f"index {rep.index_factory}; model {output.text(name)}; {rep.seconds:.1f}s"
            + (f" (model load {rep.load_seconds:.1f}s)" if rep.load_seconds >= 0.05 else "")
        )
        for path, msg in rep.error_samples[:10]:
            output.err.print(f"  [red]error[/red] {output.text(path)}: {output.text(msg)}")
        if rep.errors > 10:
            output.err.print(f"  ... {rep.errors - 10} more (see metadata column 'error')")


@app.command()
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

    fmt = _fmt(json_, csv_, paths_only)
    if k < 1:
        raise VlmsearchError(f"-k must be at least 1 (got {k})")
    html = check_output_file(html, "--html")
    coll = open_collection(collection, device, "searching")
    if model:
        coll.check_model(model)
    params = {}
    if nprobe:
        params["nprobe"] = nprobe
    if ef_search:
        params["efSearch"] = ef_search
    from vlmsearch.cli.progress import ingest_progress

    # a bar only when reranking many hits: a plain search prints nothing but its results
    quiet = fmt != "table" or rerank is None or (rerank_top is not None and rerank_top < 20)
    coll.on_notice = lambda note: output.err.print(
        f"[yellow]note:[/yellow] {output.text(note)}", soft_wrap=True
    )
    with ingest_progress(quiet) as progress:
        hits = coll.search(
            query or None,
            k=k,
            where=where,
            image=image,
            negative=negative,
            negative_image=negative_image,
            params=params,
            text_column=text_column,
            text_weight=text_weight,
            rerank=rerank,
            rerank_top=rerank_top,
            fusion=fusion,
            rerank_options=_options(rerank_option),
            progress=progress,
        )
    for note in coll.notices:
        output.err.print(f"[yellow]note:[/yellow] {output.text(note)}", soft_wrap=True)
    if coll.index_is_stale and fmt == "table":
        output.err.print(
            "[yellow]note:[/yellow] the stored index is behind the data (an interrupted index "
            "run?); searched exactly in memory. Run `vlmsearch index` to finish it."
        )
    if html is not None:
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
    if fmt == "paths":
        output.paths(hits)
    else:
        output.hits(hits, fmt, text_column)


@app.command()
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
    from vlmsearch.collection import classify_files
    from vlmsearch.models.zeroshot import parse_labels

    fmt = _fmt(json_, csv_)
    label_list = parse_labels(labels, str(labels_file) if labels_file else None)
    if paths and (collection or write_column or where):
        raise VlmsearchError("give PATHS or --collection (with --where/--write-column), not both")
    html = check_output_file(html, "--html")
    parquet = check_output_file(parquet, "--parquet")
    if paths:
        notices: list[str] = []
        preds = classify_files(
            paths,
            label_list,
            model=model,
            templates=templates,
            top_k=top_k,
            rule=rule,
            batch_size=batch_size,
            device=device,
            notices=notices,
        )
        for note in notices:
            output.err.print(
                f"[bold yellow]note:[/bold yellow] {output.text(note)}", soft_wrap=True
            )
    else:
        coll = open_collection(collection, device, "classifying")
        if write_column:
            coll.check_label_column(write_column)
        if model:
            coll.check_model(model)
        # the columns are written last, after the files: a failed write leaves neither
        preds = coll.classify(label_list, templates=templates, top_k=top_k, where=where, rule=rule)
    if html is not None:
        from vlmsearch.imaging import contact_sheet

        page = contact_sheet.classify_sheet(
            preds,
            label_list,
            "vlmsearch: " + ", ".join(label_list),
            contact_sheet.thumbnailer(None if paths else coll.path),
            meta=f"{len(preds)} images, templates {templates}, rule {rule}",
        )
        written = write_output(html, "--html", lambda p: contact_sheet.write(p, page))
        output.err.print(f"wrote {output.text(written)} ({len(preds)} images)")
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**p.to_dict(), "top": [t["label"] for t in p.to_dict()["top"]]} for p in preds]
        table = pa.Table.from_pylist(rows)
        from vlmsearch.storage.atomic import atomic_write

        write_output(
            parquet, "--parquet", lambda p: atomic_write(p, lambda t: pq.write_table(table, t))
        )
    if write_column:
        coll.write_predictions(write_column, preds, label_list, templates)
        if fmt == "table":
            output.err.print(
                output.text(
                    f"wrote columns {write_column!r} and {write_column + '_score'!r}; filter "
                    f"with --where \"{write_column} = '{label_list[0]}'\""
                )
            )
    output.predictions(preds, fmt)


@app.command()
@user_errors
def info(
    path: Annotated[
        Path | None, typer.Argument(help="A collection or an ASIF anchor set (else -c).")
    ] = None,
    collection: CollectionOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Describe a collection (model, counts, index, sizes on disk) or an ASIF anchor set."""
    from vlmsearch.models.asif.anchors import AnchorSet, is_anchor_set

    target = path or collection
    if target is not None and is_anchor_set(target):
        data = AnchorSet.open(target).info()
        if json_:
            output.emit_json(data)
        else:
            output.mapping(data)
        return
    from vlmsearch.collection import Collection

    if (
        path is not None
        and not (path / "manifest.json").is_file()
        and (path / ".vlmsearch" / "manifest.json").is_file()
    ):
        path = path / ".vlmsearch"
    data = Collection.open(target if path is None else path).info()
    if json_:
        output.emit_json(data)
        return
    enc = data.pop("encoder") or {}
    data["model"] = enc.get("name")
    if enc.get("kind") == "asif":
        data["anchors"] = (enc.get("anchors") or {}).get("path")
    if enc.get("sha256"):
        data["model sha256"] = enc["sha256"]
    choice = data.pop("encoder_choice", None) or {}
    if choice.get("requested") != choice.get("used"):
        data["model choice"] = f"{choice.get('used')} instead of {choice.get('requested')}: " + str(
            choice.get("reason")
        )
    data.pop("preprocessing", None)
    tv = data.pop("text_vectors", None) or {}
    if tv:
        data["embedded text"] = ", ".join(f"{c} ({e['rows']} rows)" for c, e in tv.items())
    output.mapping(data)


from vlmsearch.cli.asif import asif_app  # noqa: E402  (sub-command group)
from vlmsearch.cli.caption import caption  # noqa: E402
from vlmsearch.cli.check import check  # noqa: E402
from vlmsearch.cli.distill import distill  # noqa: E402
from vlmsearch.cli.serve import serve  # noqa: E402

app.add_typer(asif_app, name="asif")
app.command("caption")(caption)
app.command("check")(check)
app.command("distill")(distill)
app.command("serve")(serve)


def main() -> None:
    """Console-script entry point."""
    from typer.main import get_command

    from vlmsearch.cli.help_format import tidy

    tidy(get_command(app))(prog_name="vlmsearch")


if __name__ == "__main__":
    main()
