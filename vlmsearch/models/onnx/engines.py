"""The runtimes an exported image tower runs on: onnxruntime and OpenVINO (issue 21).

Both read the same ``model.onnx``; the one an index run uses is the faster of them and
torch, timed when the export is made (:func:`vlmsearch.models.onnx.image_tower.measure_engines`).
Each runner loads in a background thread, so the collection opens meanwhile, and exposes
``run(pixels) -> features``. Precision:

- ``fp32``: exact. OpenVINO is told so (``INFERENCE_PRECISION_HINT``): on a CPU with bf16
  or AMX instructions its default is bf16, which would drift silently.
- ``bf16``: OpenVINO's bf16 inference on CPUs that have the instructions (asked for with
  ``--precision bf16``; never chosen by itself).
- ``int8`` runs a dynamically quantised copy of the model with onnxruntime
  (:mod:`vlmsearch.models.onnx.quantize`).

Nothing here imports torch: the index fast path and queries stay torch-free.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vlmsearch.models.onnx import cache

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
ENGINES = (ONNXRUNTIME, OPENVINO)
PRECISIONS = ("fp32", "bf16", "int8")
OV_SWITCH = "VLMSEARCH_OPENVINO"  # 0: never use OpenVINO (measured or not)


class Runner(Protocol):
    def run(self, pixels: np.ndarray) -> np.ndarray: ...


def openvino_available() -> bool:
    """OpenVINO is installed and not switched off (checked without importing it)."""
    return cache.env_switch(OV_SWITCH, True) and cache.importable("openvino")


def cpu_has_bf16() -> bool:
    """The CPU has bf16 arithmetic (AVX-512 BF16 or AMX), as OpenVINO reports it."""
    if not openvino_available():
        return False
    try:
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False
    return "BF16" in {str(c).upper() for c in caps}


class OrtRunner:
    """onnxruntime on the CPU; the session is the shared loader's (:func:`cache.load_session`)."""

    engine = ONNXRUNTIME

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(pixels, np.float32)})[0]


class OpenVinoRunner:
    """An OpenVINO model compiled for the CPU. An infer request is not safe to share
    between threads (the server encodes uploads in several), so each thread gets its own."""

    engine = OPENVINO

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._local = threading.local()

    def run(self, pixels: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({0: np.ascontiguousarray(pixels, np.float32)})
        return np.array(out[0], np.float32)  # a copy: the request reuses its output buffer


def openvino_config(precision: str, threads: int | None) -> dict[str, Any]:
    """Compile settings: the precision stated outright, latency mode (one batch at a time,
    as an index run feeds it), threads when given, and a compiled-blob cache beside the
    exports so a later process does not recompile."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "CACHE_DIR": str(cache.cache_dir() / "openvino"),
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def load_runner(
    model: Path, engine: str = ONNXRUNTIME, precision: str = "fp32", threads: int | None = None
) -> Future[Runner]:
    """Start loading ``model`` on ``engine`` in a background thread; ``.result()`` waits
    and re-raises what loading raised. ``threads``: intra-op threads (default: the
    engine's own choice, one per physical core)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == ONNXRUNTIME:
        if precision == "bf16":
            raise ValueError("onnxruntime runs the image tower in fp32 or int8, not bf16")
        return _chain(cache.load_session(model, threads=threads), OrtRunner)
    runner: Future[Runner] = Future()

    def load() -> None:
        try:
            import openvino as ov

            compiled = ov.Core().compile_model(
                str(model), "CPU", openvino_config(precision, threads)
            )
            runner.set_result(OpenVinoRunner(compiled))
        except BaseException as e:
            runner.set_exception(e)

    threading.Thread(target=load, daemon=True).start()
    return runner


def _chain(loading: Future[Any], wrap: Callable[[Any], Runner]) -> Future[Runner]:
    out: Future[Runner] = Future()

    def done(f: Future[Any]) -> None:
        error = f.exception()
        if error is not None:
            out.set_exception(error)
            return
        try:
            out.set_result(wrap(f.result()))
        except BaseException as e:
            out.set_exception(e)

    loading.add_done_callback(done)
    return out


def default_threads() -> int | None:
    """``VLMSEARCH_ENGINE_THREADS`` when set (benchmarks pin it), else None."""
    raw = os.environ.get("VLMSEARCH_ENGINE_THREADS")
    return int(raw) if raw and raw.isdigit() and int(raw) > 0 else None
