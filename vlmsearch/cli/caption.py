"""``vlmsearch caption``: zero-shot captions with MAGIC (CLIP-guided decoding)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.errors import VlmsearchError


@user_errors
def caption(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Images to caption (encoded now).")
    ] = None,
    collection: Annotated[
        Path | None,
        typer.Option("--collection", "-c", help="Caption a collection's stored images."),
    ] = None,
    where: Annotated[str | None, typer.Option(help="With --collection: SQL filter.")] = None,
    write_column: Annotated[
        str | None,
        typer.Option(help="Store captions in this metadata column (resumable)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Re-caption rows that already have a caption.")
    ] = False,
    method: Annotated[str, typer.Option(help="magic, contrastive (beta=0) or greedy.")] = "magic",
    k: Annotated[int, typer.Option("-k", min=1, help="Candidate tokens per step.")] = 45,
    alpha: Annotated[float, typer.Option(help="Degeneration penalty weight.")] = 0.1,
    beta: Annotated[float, typer.Option(help="Image guidance weight.")] = 2.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 16,
    prompt: Annotated[str, typer.Option(help="Text the caption starts from.")] = "A picture of",
    lm: Annotated[
        str, typer.Option(help="Causal language model: hub name (cached) or local folder.")
    ] = "gpt2",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="For PATHS: the image-text model.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Caption images with MAGIC: a language model guided by the image-text model."""
    from vlmsearch.retrieval.captioner import Captioner
    from vlmsearch.retrieval.magic import MagicSettings

    if bool(paths) == (collection is not None):
        raise VlmsearchError("give image PATHS or --collection, not both (and not neither)")
    if paths and (where or write_column):
        raise VlmsearchError("--where and --write-column need --collection")
    settings = MagicSettings(method, k, alpha, beta, max_tokens, prompt)
    rows: list[dict[str, object]] = []
    if collection is not None:
        from vlmsearch.cli.progress import ingest_progress
        from vlmsearch.collection import Collection

        coll = Collection.open(collection, device=device)
        cap = Captioner(coll.encoder, lm, settings, device)
        with ingest_progress(json_) as progress:
            done = coll.caption(
                cap, where=where, write_column=write_column, overwrite=overwrite,
                progress=progress,
            )  # fmt: skip
        rr = coll.rows([i for i, _ in done])
        rows = [{"id": i, "path": str(coll.root / rr[i]["path"]), "caption": t} for i, t in done]
    else:
        from vlmsearch.collection import choose_encoder
        from vlmsearch.indexes.decode import load_image
        from vlmsearch.indexes.ingest import IngestOptions

        enc, notices = choose_encoder(model, None, device, {}, IngestOptions())
        for n in notices:
            output.err.print(f"[bold yellow]note:[/bold yellow] {escape(n)}", soft_wrap=True)
        cap = Captioner(enc, lm, settings, device)
        for p in paths or []:
            if not p.is_file():
                raise VlmsearchError(f"no such file: {p}")
            c = cap.caption_images([load_image(p)])[0]
            rows.append({"path": str(p), "caption": c.text})
    if json_:
        output.emit_json(rows)
        return
    for r in rows:
        output.out.print(f"{escape(str(r['path']))}\t{escape(str(r['caption']))}")
