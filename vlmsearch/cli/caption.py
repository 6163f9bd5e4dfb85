"""``vlmsearch caption``: zero-shot captions with MAGIC (CLIP-guided decoding)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vlmsearch import names
from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import DeviceOpt
from vlmsearch.errors import VlmsearchError

if TYPE_CHECKING:
    from vlmsearch.caption.magic import MagicSettings


@user_errors
def caption(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Images to caption. An image indexed (and unchanged) in the collection "
            "found at or above its folder is captioned from its stored vector."
        ),
    ] = None,
    collection: Annotated[
        Path | None,
        typer.Option(
            "--collection",
            "-c",
            help="Caption this collection's stored images (the default when no PATHS are "
            "given: see `vlmsearch search --help`).",
        ),
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
    k: Annotated[
        int, typer.Option("--candidates", "-k", min=1, help="Candidate tokens per step.")
    ] = 45,
    alpha: Annotated[float, typer.Option(help="Degeneration penalty weight.")] = 0.1,
    beta: Annotated[float, typer.Option(help="Image guidance weight.")] = 2.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 16,
    prompt: Annotated[str, typer.Option(help="Text the caption starts from.")] = "A picture of",
    lm: Annotated[
        str, typer.Option(help="Causal language model: hub name (cached) or local folder.")
    ] = "gpt2",
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="For PATHS: encode them now with this image-text model."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Caption images with MAGIC: a language model guided by the image-text model."""
    from vlmsearch.caption.magic import MagicSettings, check_language_model_name

    if paths and collection is not None:
        raise VlmsearchError("give image PATHS or --collection, not both")
    if paths and (where or write_column is not None or overwrite):
        raise VlmsearchError(
            "--where, --write-column and --overwrite need --collection (or the default "
            "collection), not PATHS"
        )
    settings = MagicSettings(method, k, alpha, beta, max_tokens, prompt)
    settings.effective()  # bad settings fail before any model is loaded
    check_language_model_name(lm)
    if not paths:  # a collection's stored images: -c, else the default one (named)
        rows = _caption_stored(
            collection, where, write_column, overwrite, lm, settings, device, quiet=json_
        )
    else:
        rows = _caption_files(paths or [], lm, settings, model, device)
    if json_:
        output.emit_json(rows)
        return
    output.path_lines(rows, lambda r: r["caption"])


def _caption_stored(
    collection: Path | None,
    where: str | None,
    write_column: str | None,
    overwrite: bool,
    lm: str,
    settings: MagicSettings,
    device: str,
    quiet: bool,
) -> list[dict[str, object]]:
    """Caption a collection's stored images (``--collection``, else the default one, named
    on stderr); with ``write_column`` the captions are stored as they come."""
    from vlmsearch.caption.captioner import Captioner
    from vlmsearch.cli.progress import ingest_progress
    from vlmsearch.cli.which import open_collection

    coll = open_collection(collection, device, "captioning")
    targets = coll.caption_targets(where, write_column, overwrite)  # fails before any load
    if len(targets) == 0:
        output.err.print(
            "nothing to caption: "
            + ("every selected row has a caption (--overwrite redoes them)"
               if write_column else "no stored image matches")
        )  # fmt: skip
    cap = Captioner(coll.encoder, lm, settings, device) if len(targets) else None
    with ingest_progress(quiet) as progress:
        done = coll.caption(
            cap, write_column=write_column, progress=progress, ids=targets
        ) if cap is not None else []  # fmt: skip
    rr = coll.rows([i for i, _ in done])
    return [
        {"id": i, "path": str(coll.root / names.row_path(rr[i])), "caption": t} for i, t in done
    ]


def _caption_files(
    paths: list[Path], lm: str, settings: MagicSettings, model: str | None, device: str
) -> list[dict[str, object]]:
    """Caption files: from a collection's stored vectors where one holds them unchanged
    (scored by that collection's encoder), else encoded now with --model or the default."""
    import numpy as np

    from vlmsearch.caption.captioner import Captioner
    from vlmsearch.caption.magic import load_language_model
    from vlmsearch.collection import Collection
    from vlmsearch.imaging.decode import ImageDecodeError, load_image
    from vlmsearch.imaging.scan import scan
    from vlmsearch.ingest.indexing import choose_encoder
    from vlmsearch.ingest.options import IngestOptions
    from vlmsearch.storage.layout import find_collection

    files: list[Path] = []
    for p in paths:
        if p.is_dir():  # a folder: its images, as `index` would find them
            files += [p / f.path for f in scan(p)]
        elif p.is_file():
            files.append(p)
        else:
            raise VlmsearchError(f"no such file or folder: {p}")
    paths = files
    language_model = load_language_model(lm, device)  # loaded once for every captioner
    captioners: dict[object, Captioner] = {}
    collections: dict[Path, Collection] = {}
    rows: list[dict[str, object]] = []
    for p in paths:
        found = None if model else find_collection(p.expanduser().absolute().parent)
        coll = None
        if found is not None:
            coll = collections.get(found) or collections.setdefault(
                found, Collection.open(found, device=device)
            )
        stored = coll.lookup_file(p) if coll is not None else None
        key: object = found if coll is not None else "default"
        if key not in captioners:
            if coll is not None:
                enc = coll.encoder
            else:
                enc, notices = choose_encoder(model, None, device, {}, IngestOptions())
                for n in notices:
                    output.note(n)
            captioners[key] = Captioner(enc, language_model, settings, device)
        cap = captioners[key]
        if coll is not None and stored is not None:
            c = cap.caption_vector(coll.vectors.dense(np.asarray([stored]))[0])
            source = f"stored vector in {coll.path}"
        else:
            try:
                image = load_image(p)
            except ImageDecodeError as e:  # reported in its row; the other files go on
                rows.append({"path": str(p), "caption": None, "vector": None, "error": str(e)})
                continue
            c = cap.caption_images([image])[0]
            source = "encoded now" + (f" by the model of {coll.path}" if coll is not None else "")
        rows.append({"path": str(p), "caption": c.text, "vector": source})
    return rows
