"""``serve --port 0`` prints the port it bound (issue 15, item 3), and prints it at once
to a pipe; a busy port is a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.serve_helpers import build_collection
from vlmsearch.cli.app import app


@pytest.fixture
def coll_path(tmp_path: Path, tiny_encoder) -> Path:
    return build_collection(tmp_path / "photos", tiny_encoder, n=4)


def _read_json_object(proc: subprocess.Popen, timeout: float) -> dict:
    """The first JSON object on the process's stdout (printed over several lines),
    waiting at most ``timeout`` seconds for it."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.time())):
            break
        chunk = os.read(proc.stdout.fileno(), 4096).decode()
        if not chunk:
            break
        text += chunk
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON address from serve within {timeout}s; got {text!r}")


def test_serve_port_zero_prints_the_bound_port(coll_path: Path) -> None:
    exe = shutil.which("vlmsearch")
    if exe is None:
        pytest.skip("console script not installed (pip install -e .)")
    proc = subprocess.Popen(
        [exe, "serve", str(coll_path), "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        info = _read_json_object(proc, timeout=120)
        url = info["url"]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert url.startswith("http://127.0.0.1:") and port > 0, url
        deadline = time.time() + 60
        while True:  # the address is printed just before uvicorn starts serving
            try:
                with urllib.request.urlopen(url + "api/health", timeout=5) as r:
                    assert r.status == 200 and "collections" in json.loads(r.read())
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_serve_busy_port_is_one_line(coll_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["serve", str(coll_path), "--port", str(port)])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(port) in lines[0], lines
