"""``vlmsearch`` console script: registers the commands, each in its own module.

Heavy imports happen inside the commands, so --help is fast."""

from __future__ import annotations

from typing import Annotated

import typer

from vlmsearch._version import __version__
from vlmsearch.cli.asif import asif_app
from vlmsearch.cli.caption import caption
from vlmsearch.cli.check import check
from vlmsearch.cli.classify import classify
from vlmsearch.cli.compact import compact
from vlmsearch.cli.distill import distill
from vlmsearch.cli.duplicates import duplicates
from vlmsearch.cli.eval import eval_app
from vlmsearch.cli.import_cmd import import_app
from vlmsearch.cli.index import index
from vlmsearch.cli.info import info
from vlmsearch.cli.ocr import ocr
from vlmsearch.cli.search import search
from vlmsearch.cli.serve import serve

app = typer.Typer(
    name="vlmsearch",
    help="Search, classify and inspect image folders with vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


# The order here is the order of `vlmsearch --help` (command groups come last).
app.command("index")(index)
app.command("search")(search)
app.command("classify")(classify)
app.command("duplicates")(duplicates)
app.command("info")(info)
app.command("caption")(caption)
app.command("ocr")(ocr)
app.command("check")(check)
app.command("compact")(compact)
app.command("distill")(distill)
app.command("serve")(serve)
app.add_typer(asif_app, name="asif")
app.add_typer(import_app, name="import")
app.add_typer(eval_app, name="eval")


def main() -> None:
    """Console-script entry point."""
    from typer.main import get_command

    from vlmsearch.cli.help_format import tidy

    tidy(get_command(app))(prog_name="vlmsearch")


if __name__ == "__main__":
    main()
