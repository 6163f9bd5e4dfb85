"""``vlmsearch import clip-retrieval``: a collection from embeddings made elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import DeviceOpt, JsonOpt

import_app = typer.Typer(
    help="Make a collection from embeddings another tool computed, without encoding.",
    no_args_is_help=True,
)


@import_app.command("clip-retrieval")
@user_errors
def clip_retrieval(
    folder: Annotated[
        Path, typer.Argument(help="A clip-retrieval inference output (img_emb/, metadata/).")
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="The open_clip model that made the embeddings (ARCH/PRETRAINED or "
            "ARCH:/path/to/checkpoint); queries use it.",
        ),
    ],
    collection: Annotated[
        Path | None,
        typer.Option("--collection", "-c", help="Where to write it (default: FOLDER/.vlmsearch)."),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            help="The folder image paths are relative to (default: their common folder when "
            "they are local files, else FOLDER)."
        ),
    ] = None,
    index_type: Annotated[
        str, typer.Option("--index", help="Index type, as for `vlmsearch index`.")
    ] = "auto",
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Import a clip-retrieval (or LAION embedding dump) folder: each partition's vectors,
    image paths, captions and metadata fields become a commit; an interrupted import of
    the same folder resumes; the index is built as `vlmsearch index` builds it."""
    from vlmsearch.cli.progress import ingest_progress
    from vlmsearch.collection import Collection
    from vlmsearch.ingest.import_clip_retrieval import check_target, find_parts
    from vlmsearch.ingest.options import IngestOptions
    from vlmsearch.models.encoders import load_encoder
    from vlmsearch.storage.ann.plan import check_index_request
    from vlmsearch.storage.layout import Layout

    folder = folder.expanduser()
    target = collection.expanduser() if collection else folder / ".vlmsearch"
    # everything checkable is checked before the model loads
    parts = find_parts(folder)
    check_target(Layout(target), folder)
    check_index_request(index_type, parts[0].dim, False)
    encoder = load_encoder(model, device=None if device == "auto" else device)
    with ingest_progress(quiet or json_) as progress:
        coll = Collection.import_clip_retrieval(
            folder, target, encoder, root, IngestOptions(index=index_type), progress
        )
    rep = coll.last_report
    assert rep is not None
    if json_:
        output.emit_json({**rep.to_dict(), "collection": str(coll.path)})
    elif not quiet:
        output.err.print(
            f"imported {rep.new} embeddings ({rep.unchanged} already imported) into "
            f"{output.text(coll.path)}; index {rep.index_factory}"
        )
