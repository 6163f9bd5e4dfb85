"""``vlmsearch serve``: the HTTP API and web page. FastAPI and uvicorn load only here."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.errors import VlmsearchError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_key(path: Path | None) -> str | None:
    """The key from --api-key-file (first line), else $VLMSEARCH_API_KEY; never from the
    command line, where other users could read it in the process list."""
    if path is not None:
        try:
            key = path.expanduser().read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as e:
            raise VlmsearchError(f"cannot read an API key from {path}: {e}") from None
    else:
        key = os.environ.get("VLMSEARCH_API_KEY", "").strip()
    if key and len(key) < 16:
        raise VlmsearchError("the API key must be at least 16 characters")
    return key or None


@user_errors
def serve(
    collections: Annotated[
        list[str] | None,
        typer.Argument(
            help="Collections to serve, as [NAME=]PATH (a collection or an indexed folder). "
            "Default: the one `search` would use."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind.")] = 8000,
    allow_remote: Annotated[
        bool,
        typer.Option(help="Allow binding to an address other than loopback (prints a warning)."),
    ] = False,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File whose first line is the API key every request must present "
            "(default: $VLMSEARCH_API_KEY; unset = no key)."
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.01, help="Largest request body, MiB (413 above).")
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Largest uploaded image, pixels (decompression guard).")
    ] = 40_000_000,
    max_k: Annotated[
        int, typer.Option(min=1, max=10_000, help="Largest k a request may ask.")
    ] = 1000,
    rerank: Annotated[
        list[str] | None,
        typer.Option(help="Reranker specs clients may use (repeatable); 'none' for none."),
    ] = None,
    lm: Annotated[
        str | None, typer.Option(help="Causal LM for captions (cached name or local folder).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    json_: Annotated[bool, typer.Option("--json", help="Print the address as JSON.")] = False,
) -> None:
    """Serve collections over HTTP: a JSON API (docs at /docs) and a search page at /."""
    from vlmsearch.server.config import ServerConfig, parse_collection_args

    if not is_loopback(host) and not allow_remote:
        raise VlmsearchError(
            f"--host {host} is not a loopback address: anyone who can reach it could search "
            "and read your images. Pass --allow-remote to do it anyway (and set an API key)."
        )
    rerankers = tuple(r for r in (rerank or ["region"]) if r.lower() != "none")
    config = ServerConfig(
        collections=parse_collection_args(list(collections or [])),
        api_key=read_api_key(api_key_file),
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_pixels=max_pixels,
        max_k=max_k,
        rerankers=rerankers,
        lm=lm,
        device=device,
    )
    if not is_loopback(host):
        output.err.print(
            f"[bold yellow]warning:[/bold yellow] serving on {escape(host)}, not loopback: "
            + (
                "requests need the API key."
                if config.api_key
                else "[bold]no API key is set[/bold], so anyone who can reach this address "
                "can search and read the images."
            ),
            soft_wrap=True,
        )
    try:
        import uvicorn

        from vlmsearch.server.app import create_app
    except ImportError as e:  # pragma: no cover - the server deps are core dependencies
        raise VlmsearchError(f"the server needs FastAPI and uvicorn: {e}") from None
    app = create_app(config)
    for name, served in app.state.ctx.registry.items.items():
        if not served.available:
            output.err.print(
                f"[bold yellow]warning:[/bold yellow] collection {escape(name)} is unavailable: "
                f"{escape(str(served.reload_error))}",
                soft_wrap=True,
            )
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    if json_:
        output.emit_json({"url": url, "collections": sorted(config.collections)})
    else:
        names = ", ".join(sorted(config.collections))
        output.err.print(f"serving {escape(names)} at {url} (API docs at {url}docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
