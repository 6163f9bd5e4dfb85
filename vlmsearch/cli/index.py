"""``vlmsearch index``: embed a folder's images, incrementally, or keep watching it.

The command function is over 80 lines: the signature is the option list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import DEFAULT_MODEL, DeviceOpt, JsonOpt
from vlmsearch.errors import QueryError, VlmsearchError


@user_errors
def index(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Folder of images to index (recursively), or dataset files: webdataset "
            ".tar shards, Parquet files with an image column, videos (with --video).",
            show_default=False,
        ),
    ],
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
            help="auto, flat, hnsw, ivf, ivfpq, ondisk (IVF-PQ, lists memory-mapped from "
            "disk), ondisk:IVF-FACTORY or a FAISS factory string. Default: the "
            "collection's saved choice (auto for a new one); auto resets it.",
        ),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="Memory --index auto may plan for, e.g. 4G or 512M (default: half of RAM).",
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
    precision: Annotated[
        str | None,
        typer.Option(
            help="The image tower's arithmetic on the CPU: fp32 (exact), bf16 (OpenVINO, "
            "CPUs with bf16 instructions) or int8 (onnxruntime, dynamically quantised). "
            "Reduced precision is faster and drifts slightly (docs/usage.md has the "
            "figures); recorded in the manifest. Default: the collection's, fp32 for a "
            "new one.",
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
    image_column: Annotated[
        str | None,
        typer.Option(
            help="Parquet datasets: the column holding the image (bytes, a {bytes, path} "
            "struct, or a path). Default: the first bytes or image-struct column.",
        ),
    ] = None,
    image_base: Annotated[
        Path | None,
        typer.Option(
            help="Parquet datasets: the folder image paths are relative to (default: the "
            "Parquet file's folder).",
        ),
    ] = None,
    video: Annotated[
        bool | None,
        typer.Option(
            "--video/--no-video",
            help="Also index video files (.mp4 .mov .mkv .webm .avi .m4v): a frame every "
            "--video-interval seconds and at scene changes, each a result with its time. "
            "Remembered by the collection. Needs the extra: pip install 'vlmsearch\\[video]'.",
        ),
    ] = None,
    video_interval: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="With --video: seconds between sampled frames. Default: the collection's, else 2.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="auto|ADDRESS",
            help="Decode and encode on Ray: 'auto' starts a local Ray runtime on every core "
            "and GPU, an address joins a cluster (images and collection on a shared "
            "filesystem). Needs the extra: pip install 'vlmsearch\\[ray]'.",
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
    ocr: Annotated[
        bool,
        typer.Option(
            "--ocr",
            help="Then read the text inside the images that lack it into column 'text' "
            "(see `vlmsearch ocr`; needs the ocr extra: rapidocr-onnxruntime).",
        ),
    ] = False,
) -> None:
    """Embed every image under a folder, or in dataset files, incrementally (new, changed
    and deleted images)."""
    from vlmsearch.ingest.options import IngestOptions

    if watch and (len(paths) != 1 or not paths[0].is_dir()):
        raise VlmsearchError("--watch needs one folder")
    if video:
        from vlmsearch.imaging.sources.video import require_av

        require_av()  # before any model loads
    if ocr:
        if watch:
            raise VlmsearchError("--ocr does not go with --watch; run `vlmsearch ocr` after")
        from vlmsearch.cli.ocr import check_ocr_column

        check_ocr_column(OCR_COLUMN)  # the extra is there: before any work

    opts = IngestOptions(
        index=index_type,
        memory_budget=_bytes(memory_budget),
        rebuild=rebuild,
        repair=repair,
        batch_size=batch_size,
        workers=workers,
        extensions=tuple(ext.split(",")) if ext else None,
        include_hidden=hidden,
        commit_every=commit_every,
        fast_decode=fast_decode,
        precision=_precision(precision),
        gpu_decode=gpu_decode,
        image_column=image_column,
        image_base=str(image_base) if image_base else None,
        video=video,
        video_interval=video_interval,
        ray=ray,
    )
    enc_opts = _given(
        k=asif_k,
        p=asif_p,
        p_image=asif_p_image,
        p_text=asif_p_text,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
    )
    encoder, model = _encoder_choice(encoder, model, anchors, enc_opts)
    how = dict(
        model=model, encoder_kind=encoder, options=opts, device=device, encoder_options=enc_opts
    )
    if watch:
        _watch(paths[0], collection, how, quiet, json_, interval)
    else:
        _index_once(paths, collection, how, quiet, json_, ocr)


OCR_COLUMN = "text"  # where `index --ocr` stores the text (`vlmsearch ocr` can choose)


def _given(**options: Any) -> dict[str, Any]:
    """The encoder options that were given (not None), in order."""
    return {k: v for k, v in options.items() if v is not None}


def _encoder_choice(
    encoder: str | None, model: str | None, anchors: str | None, enc_opts: dict[str, Any]
) -> tuple[str | None, str | None]:
    """``(encoder kind, model)``: --anchors and the ASIF options imply ``--encoder asif``,
    and --anchors names the model."""
    if anchors is None and not enc_opts:
        return encoder, model
    if encoder not in (None, "asif"):
        raise VlmsearchError(
            "--anchors, --image-encoder, --text-encoder and the --asif-* options are for "
            "ASIF; they need --encoder asif"
        )
    if anchors is not None and model is not None:
        raise VlmsearchError("give the anchor set with --anchors or --model, not both")
    return "asif", anchors if anchors is not None else model


def _index_once(
    paths: list[Path],
    collection: Path | None,
    how: dict[str, Any],
    quiet: bool,
    json_: bool,
    ocr: bool = False,
) -> None:
    """One ``index`` run with progress bars, then (``ocr``) OCR of the rows without text,
    then its report; ``how`` holds the keyword arguments for :meth:`Collection.index`
    (model, encoder, options, device)."""
    from vlmsearch.cli.progress import ingest_progress
    from vlmsearch.collection import Collection

    shown: list[str] = []

    def notice(note: str) -> None:  # before the progress bars; none with -q
        shown.append(note)
        if not quiet:
            output.note(note)

    with ingest_progress(quiet or json_) as progress:
        target = paths[0] if len(paths) == 1 else paths
        coll = Collection.index(target, collection, progress=progress, on_notice=notice, **how)
    rep = coll.last_report
    assert rep is not None
    read = None
    if ocr:
        from vlmsearch.caption.run import ColumnTakenError
        from vlmsearch.cli.ocr import run_ocr
        from vlmsearch.models.ocr import OcrEngine

        try:
            read = len(run_ocr(coll, None, OCR_COLUMN, False, OcrEngine(), quiet or json_))
        except ColumnTakenError as e:  # a Parquet dataset's own `text` column, say
            which = "which" if e.column == OCR_COLUMN else f"whose companion {e.column!r}"
            raise QueryError(
                f"the images are indexed, but --ocr stores text in column {OCR_COLUMN!r}, "
                f"{which} already holds {e.held}; run `vlmsearch ocr --write-column "
                "ocr_text` to read the text into another column"
            ) from None
    _report(coll, rep, quiet, json_, shown, read)


def _watch(
    directory: Path,
    collection: Path | None,
    how: dict[str, Any],
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
        output.note(f"{e}; retrying", "yellow")

    if not quiet and not json_:
        output.err.print(f"watching {output.text(directory)} every {interval:g}s; Ctrl-C stops")
    watch(directory, collection, interval=interval, on_report=on_report, on_error=on_error, **how)


def _report(
    coll: Any, rep: Any, quiet: bool, json_: bool, shown: list[str], ocr_read: int | None = None
) -> None:
    """The notes not shown yet, then the run's summary (JSON, or a line on stderr)."""
    for note in rep.notices if not quiet else ():
        if note not in shown:
            output.note(note)
    if json_:
        extra = {"ocr_read": ocr_read} if ocr_read is not None else {}
        output.emit_json({**rep.to_dict(), **extra})
        return
    if quiet:
        return
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


def _bytes(text: str | None) -> int | None:
    """``4G``, ``512M``, ``100000K`` or plain bytes, for --memory-budget."""
    if text is None:
        return None
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size such as 4G or 512M") from None
    if value <= 0:
        raise typer.BadParameter("--memory-budget must be positive")
    return int(value * scale)


def _precision(value: str | None) -> str | None:
    """``--precision``, checked before anything loads."""
    if value is None:
        return None
    value = value.strip().lower()
    if value not in ("fp32", "bf16", "int8"):
        raise VlmsearchError(f"--precision must be fp32, bf16 or int8, not {value!r}")
    return value
