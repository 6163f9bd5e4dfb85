"""Helpers for the server tests: a tiny collection, an app over it, a live uvicorn."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions


def build_collection(root: Path, encoder, n: int = 12) -> Path:
    make_images(root, n)
    with pytest.MonkeyPatch.context() as mp:  # keep 'last collection' out of the home dir
        mp.setenv("XDG_STATE_HOME", str(root.parent / "state"))
        Collection.index(root, encoder=encoder, options=IngestOptions(workers=0))
    return root / ".vlmsearch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, **options) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields the base URL.
    ``options`` go to ``uvicorn.Config`` (e.g. those of ``timeouts.uvicorn_options``)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **options
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
