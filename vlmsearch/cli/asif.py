"""``vlmsearch asif ...``: ASIF anchor sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.errors import VlmsearchError

asif_app = typer.Typer(
    help="ASIF: multimodal search from an image encoder and a text encoder, via anchor pairs.",
    no_args_is_help=True,
)
anchors_app = typer.Typer(help="Build and describe anchor sets.", no_args_is_help=True)
asif_app.add_typer(anchors_app, name="anchors")


@anchors_app.command("build")
@user_errors
def build(
    out: Annotated[Path, typer.Argument(help="Directory to write the anchor set to.")],
    prototype: Annotated[
        bool,
        typer.Option(
            "--prototype",
            help="Prototype anchors: the image encoder's classifier rows paired with "
            "'a photo of a {class}' (no data needed).",
        ),
    ] = False,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Data anchors from a captioned source: a collection with a caption column, "
            "or a CSV/Parquet file of (image path, caption) rows.",
        ),
    ] = None,
    image_encoder: Annotated[
        str, typer.Option(help="efficientnet-lite0, timm:MODEL[:WEIGHTS], open_clip:MODEL.")
    ] = "efficientnet-lite0",
    text_encoder: Annotated[
        str, typer.Option(help="minilm, sentence-transformers:NAME_OR_PATH, open_clip:MODEL.")
    ] = "minilm",
    templates: Annotated[
        str,
        typer.Option(
            help="Prototype captions: a template with {}, or openai/simple (averaged sets)."
        ),
    ] = "a photo of a {}.",
    with_prototypes: Annotated[
        bool | None,
        typer.Option(
            "--prototypes/--no-prototypes",
            help="With --from: add the image encoder's prototype anchors (classes and WordNet "
            "hypernyms) as a second block. Default: when the encoder has a classifier head.",
            show_default=False,
        ),
    ] = None,
    image_column: Annotated[str | None, typer.Option(help="Image path column.")] = None,
    caption_column: Annotated[str | None, typer.Option(help="Caption column.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing anchor set.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = 64,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding processes.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Build an anchor set (prototype or data anchors) for ASIF collections."""
    from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder

    if prototype == (source is not None):
        raise VlmsearchError("choose one kind: --prototype, or --from SOURCE (data anchors)")
    if prototype and with_prototypes is not None:
        raise VlmsearchError("--prototypes/--no-prototypes go with --from (data anchors)")
    img = load_image_encoder(image_encoder, device=device)
    txt = load_text_encoder(text_encoder, device=device)
    failed: list[tuple[str, str]] = []
    if prototype:
        from vlmsearch.models.asif.build import build_prototype_anchors

        aset = build_prototype_anchors(out, img, txt, templates=templates, overwrite=overwrite)
    else:
        from vlmsearch.cli.progress import ingest_progress
        from vlmsearch.models.asif.build import build_data_anchors

        assert source is not None
        with ingest_progress(quiet or json_) as progress:
            aset, failed = build_data_anchors(
                out,
                img,
                txt,
                source,
                image_column=image_column,
                caption_column=caption_column,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                overwrite=overwrite,
                prototypes=with_prototypes,
            )
    data = aset.info()
    data["images_failed"] = [{"path": p, "error": e} for p, e in failed]
    if json_:
        output.emit_json(data)
        return
    for p, e in failed[:10]:
        output.err.print(f"  [red]skipped[/red] {output.text(p)}: {output.text(e)}")
    data.pop("images_failed")
    output.mapping(data)
    output.err.print(output.text(f"use it with: vlmsearch index DIR --anchors {aset.path}"))


@anchors_app.command("info")
@user_errors
def info(
    path: Annotated[Path, typer.Argument(help="Anchor set directory.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe an anchor set."""
    from vlmsearch.models.asif.anchors import AnchorSet

    data = AnchorSet.open(path).info()
    if json_:
        output.emit_json(data)
    else:
        output.mapping(data)
