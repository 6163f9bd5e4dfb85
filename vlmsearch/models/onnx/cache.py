"""The cache mechanics shared by the ONNX tower exports (text_onnx and image_onnx).

Both modules export a tower once with torch, check it against the torch encoder, and keep
it under ``<cache>/<kind>/<key>/`` with a ``meta.json``; later queries run it with
onnxruntime and no torch. What differs (the graph's inputs, tokenizer vs preprocessing,
the check data) stays in those modules; what must stay the same for both -- the key, the
meta.json validation, the atomic write, the cosine check, the session loading -- is here,
so the two caches cannot drift apart. Nothing here imports torch at module level: queries
must stay torch-free (tests/test_lazy_imports.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vlmsearch.runtime import cache_dir

OPSET = 17
META = "meta.json"

T = TypeVar("T")


class ExportError(RuntimeError):
    """The tower could not be exported, or the export does not match the original."""


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable ("0", "false", "no", "off" mean off); ``default``
    when unset, so one switch can default to another's value."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def importable(*modules: str) -> bool:
    """All ``modules`` can be imported -- checked without importing them, which would cost
    the time the exports exist to save."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def export_key(spec: dict[str, Any], fmt: int) -> str:
    """The cache key of a tower: a hash of the export format and the encoder's whole spec
    (weights' sha256 or pretrained tag, sizes), so any change gives a new folder."""
    blob = json.dumps({"format": fmt, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def export_dir(kind: str, key: str) -> Path:
    """``<cache>/<kind>/<key>``: where one checked export lives (kind: "text-onnx", ...)."""
    return cache_dir() / kind / key


def read_meta(folder: Path) -> dict[str, Any]:
    """An export folder's meta.json (raises OSError or ValueError when unreadable)."""
    return json.loads((folder / META).read_text(encoding="utf-8"))


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write meta.json sorted and indented, so the same export gives the same bytes;
    through a temporary file renamed into place, so a reader never sees half of one."""
    tmp = folder / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / META)


def checked_meta(folder: Path, fmt: int, key: str) -> dict[str, Any] | None:
    """The folder's meta.json when it is of format ``fmt``, for ``key`` and passed its
    check (written last, so a half-made export has none); else None. The caller checks
    its own files on top."""
    try:
        meta = read_meta(folder)
    except (OSError, ValueError):
        return None
    if meta.get("format") == fmt and meta.get("key") == key and "check" in meta:
        return meta
    return None


@contextlib.contextmanager
def staged_folder(dest: Path) -> Iterator[Path]:
    """A temporary sibling of ``dest`` to write an export into; renamed to ``dest`` when
    the block ends without error, removed in any case, so readers never see half a folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():  # a concurrent export won, or a stale one is replaced
            shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_graph(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """torch.onnx.export with the settings every tower uses: no grad, opset :data:`OPSET`,
    the TorchScript exporter (it needs only the onnx package), its tracing warnings off."""
    import torch

    with torch.no_grad(), quiet_export():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )


def cosine_check(want: Any, got: np.ndarray, min_cosine: float, what: str) -> dict[str, float]:
    """Row-wise cosine of the export's output ``got`` to torch's ``want``; raises
    ExportError ("its <what> drift ...") below ``min_cosine``, else the numbers that go
    into meta.json's ``check``."""
    want = np.asarray(want, np.float32)
    cos = np.sum(want * got, axis=1) / (
        np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1) + 1e-12
    )
    worst = float(cos.min())
    if not worst >= min_cosine:
        raise ExportError(f"its {what} drift from torch's (min cosine {worst:.6f})")
    return {"min_cosine": worst, "max_abs": float(np.abs(want - got).max())}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): what cosine search expects."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def first_line(e: BaseException) -> str:
    """An exception's first line, at most 200 characters, for a one-line notice."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def export_notice(
    what: str,
    build: Callable[[], T | None],
    write: Callable[[T], None],
    unexportable: str | None,
) -> str | None:
    """Build a tower and write its export. None when that worked, else a one-line notice
    that ``what`` queries keep using torch (``unexportable`` when ``build`` gives None).
    Never raises: a failed export only costs speed."""
    try:
        tower = build()
        if tower is None:
            return unexportable
        write(tower)
    except ExportError as e:
        return f"{what} queries will use torch (no ONNX {what} tower: {e})"
    except Exception as e:  # the exporter raises many kinds for unsupported graphs
        return f"{what} queries will use torch (ONNX export failed: {first_line(e)})"
    return None


def load_session(model: Path, threads: int | None = None, spin: bool = True) -> Future[Any]:
    """Start creating an onnxruntime CPU session for ``model`` in a background thread, so
    it loads while the caller opens the collection; ``.result()`` waits for it and
    re-raises in the caller's thread whatever creating it raised. ``threads``: its
    intra-op threads (default: onnxruntime's, one per physical core). ``spin=False``
    stops its idle threads from busy-waiting, which an index run needs: the decoding
    workers share the cores (a 1000-image ViT-B-32 run used 178 CPU-s in 92 s with
    spinning threads, against about 120 CPU-s in 61 s on OpenVINO)."""
    session: Future[Any] = Future()

    def load() -> None:
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.log_severity_level = 3  # errors only: its optimiser warns about benign things
            if threads is not None:
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
            if not spin:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session.set_result(
                ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
            )
        except BaseException as e:
            session.set_exception(e)

    threading.Thread(target=load, daemon=True).start()
    return session


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """The TorchScript exporter warns about tracing Python control flow in every model."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
