"""``vlmsearch serve``: the HTTP API and web page. FastAPI and uvicorn load only here.

The command function is over 80 lines: the signature is the option list."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import DeviceOpt
from vlmsearch.errors import VlmsearchError

if TYPE_CHECKING:
    from vlmsearch.server.config import ServerConfig


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
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Another name clients may use in the Host header (repeatable; '*' = any). "
            "Without an API key only loopback names and the bound address are answered "
            "(DNS rebinding guard).",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="A web origin whose pages may call the API from a browser, e.g. "
            "http://localhost:1234 for clip-retrieval's front end (repeatable; none by "
            "default).",
        ),
    ] = None,
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
    max_terms: Annotated[
        int, typer.Option(min=1, help="Text terms (and negatives) one search may have.")
    ] = 32,
    max_images: Annotated[
        int, typer.Option(min=1, help="Uploaded images (and negatives) one search may have.")
    ] = 16,
    max_labels: Annotated[int, typer.Option(min=2, help="Labels one classify may have.")] = 100,
    max_prompts: Annotated[
        int, typer.Option(min=2, help="Labels x templates one classify may embed.")
    ] = 2000,
    max_text_chars: Annotated[
        int, typer.Option(min=1, help="Characters in one text term or label.")
    ] = 1000,
    max_text_embed: Annotated[
        int,
        typer.Option(
            min=0, help="Texts of a --text-column the server embeds in memory (never stored)."
        ),
    ] = 1000,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client has to send a request header.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client has to send a whole request body.")
    ] = 60.0,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections at most (503 beyond).")
    ] = 100,
    filter_timeout: Annotated[
        float, typer.Option(min=0.01, help="Time budget of one where filter, seconds.")
    ] = 10.0,
    rerank: Annotated[
        list[str] | None,
        typer.Option(help="Reranker specs clients may use (repeatable); 'none' for none."),
    ] = None,
    lm: Annotated[
        str | None, typer.Option(help="Causal LM for captions (cached name or local folder).")
    ] = None,
    device: DeviceOpt = "auto",
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
    for origin in cors_origin or ():
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise VlmsearchError(
                f"--cors-origin {origin!r}: give a scheme and host, e.g. http://localhost:1234"
            )
    rerankers = tuple(r for r in (rerank or ["region"]) if r.lower() != "none")
    config = ServerConfig(
        collections=parse_collection_args(list(collections or [])),
        api_key=read_api_key(api_key_file),
        host=host,
        allowed_hosts=tuple(allowed_host or ()),
        cors_origins=tuple(cors_origin or ()),
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_pixels=max_pixels,
        max_k=max_k,
        max_terms=max_terms,
        max_images=max_images,
        max_labels=max_labels,
        max_prompts=max_prompts,
        max_text_chars=max_text_chars,
        max_text_embed=max_text_embed,
        filter_timeout_s=filter_timeout,
        rerankers=rerankers,
        lm=lm,
        device=device,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
    )
    if not is_loopback(host):
        _warn_remote(host, bool(config.api_key))
    _run(config, host, port, log_level, json_)


def _run(config: ServerConfig, host: str, port: int, log_level: str, json_: bool) -> None:
    """Create the app, bind the socket, say where, and serve until stopped."""
    try:
        import uvicorn

        from vlmsearch.server.app import create_app
        from vlmsearch.server.timeouts import uvicorn_options
    except ImportError as e:  # pragma: no cover - the server deps are core dependencies
        raise VlmsearchError(f"the server needs FastAPI and uvicorn: {e}") from None
    app = create_app(config)
    _warn_unavailable(app)
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]  # the one bound: --port 0 lets the system choose
    _announce(f"http://{'[' + host + ']' if ':' in host else host}:{port}/", config, json_)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=5,
            **uvicorn_options(config),
        )
    )
    server.run(sockets=[sock])


def _warn_remote(host: str, keyed: bool) -> None:
    """Say on stderr that ``host`` is not loopback, and whether requests need a key."""
    output.err.print(
        f"[bold yellow]warning:[/bold yellow] serving on {output.text(host)}, not loopback: "
        + (
            "requests need the API key."
            if keyed
            else "[bold]no API key is set[/bold], so anyone who can reach this address "
            "can search and read the images."
        ),
        soft_wrap=True,
    )


def _warn_unavailable(app: Any) -> None:
    """A warning on stderr for each collection the server could not open."""
    for name, served in app.state.ctx.registry.items.items():
        if not served.available:
            output.err.print(
                f"[bold yellow]warning:[/bold yellow] collection {output.text(name)} is "
                f"unavailable: {output.text(served.reload_error)}",
                soft_wrap=True,
            )


def _announce(url: str, config: ServerConfig, json_: bool) -> None:
    """Print where the server listens: JSON on stdout (flushed at once), else a line on
    stderr."""
    if json_:
        output.emit_json({"url": url, "collections": sorted(config.collections)})
        sys.stdout.flush()  # a script reading the pipe needs the address now, not at exit
    else:
        names = ", ".join(sorted(config.collections))
        output.err.print(f"serving {output.text(names)} at {url} (API docs at {url}docs)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to ``host:port``, bound here rather than by uvicorn
    so that the address printed is the one bound and a busy port is a one-line error."""
    addr = host.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, port))
    except OSError as e:
        sock.close()
        raise VlmsearchError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock
