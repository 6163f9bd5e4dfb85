"""Option types and small parsers shared by several commands (light imports only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmsearch.errors import VlmsearchError

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


def choose_format(json_: bool, csv_: bool = False, paths: bool = False) -> str:
    """The output format the flags ask for: json, csv, paths or table (at most one flag)."""
    if json_ + csv_ + paths > 1:
        raise VlmsearchError("choose one of --json, --csv and --paths")
    return "json" if json_ else "csv" if csv_ else "paths" if paths else "table"


def reranker_options(pairs: list[str] | None) -> dict[str, object]:
    """``KEY=VALUE`` strings to keyword options: numbers and true/false are converted."""
    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise VlmsearchError(f"reranker options are KEY=VALUE (got {pair!r})")
        out[key.strip()] = _scalar(raw)
    return out


def _scalar(raw: str) -> object:
    """``raw`` as a bool, int or float where it reads as one, else the string itself."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
