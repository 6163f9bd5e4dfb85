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
    """An OpenVINO model compiled for the CPU in throughput mode: several streams, each a
    few cores running its own sub-batch with no barriers between them (on the 2-core
    machine: 2 streams of 1 thread, 6% more images/s than one 2-thread request, and a
    decoding worker that takes a core stalls one stream instead of both). A batch is cut
    into at least one sub-batch per stream, run in waves of one request per stream; each
    call makes its own requests, so threads (the server's) never share one."""

    engine = OPENVINO
    SUB_BATCH = 32  # at most this many images per request

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        try:
            self.requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:
            self.requests = 1

    def run(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, np.float32)
        n = len(pixels)
        step = max(1, min(self.SUB_BATCH, -(-n // self.requests)))
        starts = list(range(0, n, step))
        # no Python callbacks: one would need the GIL on OpenVINO's thread while this
        # one waits (a deadlock seen under pytest); requests are started, then waited on
        pool = [
            self.compiled.create_infer_request() for _ in range(min(self.requests, len(starts)))
        ]
        out: list[np.ndarray] = []
        for i in range(0, len(starts), len(pool)):
            wave = list(zip(pool, starts[i : i + len(pool)], strict=False))
            for request, start in wave:
                request.start_async({0: pixels[start : start + step]})
            for request, _ in wave:
                request.wait()
                out.append(np.array(request.get_output_tensor(0).data, np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def openvino_config(precision: str, threads: int | None) -> dict[str, Any]:
    """Compile settings: the precision stated outright, throughput mode (OpenVINO picks
    the streams for the cores it is given), threads when given, and a compiled-blob cache
    beside the exports so a later process does not recompile."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "THROUGHPUT",
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
        return _chain(cache.load_session(model, threads=threads, spin=False), OrtRunner)
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
