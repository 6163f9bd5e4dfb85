"""``vlmsearch distill``: train a collection's region student for ``--rerank region``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors


@user_errors
def distill(
    collection: Annotated[
        Path | None,
        typer.Option("--collection", "-c", help="The collection (default: as for search)."),
    ] = None,
    backbone: Annotated[
        str,
        typer.Option(
            help="efficientnet-lite0 (ImageNet weights, offline extra), timm:NAME[:WEIGHTS] "
            "or tiny (random CNN, for tests)."
        ),
    ] = "efficientnet-lite0",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training images.")] = 20,
    max_images: Annotated[
        int, typer.Option(min=2, help="Images drawn from the collection (teacher cost grows).")
    ] = 200,
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated label texts: adds ViLD-text's loss."),
    ] = None,
    train_backbone: Annotated[
        bool | None,
        typer.Option(
            "--train-backbone/--freeze-backbone",
            help="Default: train the tiny backbone, freeze pretrained ones.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Distil the region teacher (crop embeddings) into a RoIAlign student, ViLD-style."""
    from vlmsearch.cli.progress import ingest_progress
    from vlmsearch.collection import Collection
    from vlmsearch.rerank.region.distill import distill as run_distill

    coll = Collection.open(collection, device=device)
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    with ingest_progress(json_) as progress:
        _, report = run_distill(
            coll, backbone, epochs=epochs, max_images=max_images, labels=label_list,
            train_backbone=train_backbone, device=device, progress=progress,
        )  # fmt: skip
    data = report.to_dict()
    if json_:
        output.emit_json(data)
        return
    output.out.print(
        f"region student for [bold]{output.text(coll.path)}[/bold]: {report.images} images "
        f"({report.held_out} held out), {report.regions} regions, {report.epochs} epochs; "
        f"held-out cosine to the teacher {report.held_out_cosine_before:.3f} -> "
        f"{report.held_out_cosine_after:.3f}; {report.speedup:.1f}x faster than the teacher "
        f"({report.student_seconds_per_image * 1000:.0f} vs "
        f"{report.teacher_seconds_per_image * 1000:.0f} ms per image)"
    )
