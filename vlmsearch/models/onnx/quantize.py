"""An int8 copy of an exported image tower, for ``vlmsearch index --precision int8``.

onnxruntime's dynamic quantisation: weights of the matrix products and convolutions are
stored as int8 once, activations are quantised per batch at run time, so no calibration
images are needed. On this project's 2-core AVX-512 VNNI machine it ran ViT-B-32's image
tower at 2.4x onnxruntime fp32: 43.8 against 18.5 images/s (benchmarks/RESULTS.md, issue
21). The copy is written once beside ``model.onnx`` as ``model-int8.onnx`` (staged, then
renamed) and its drift on the export's fixed check images is recorded in ``meta.json``
under ``int8``. It is kept only if that cosine is at least :data:`MIN_COSINE`; otherwise
int8 is refused for the model with the measured figure.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.models.onnx import cache

INT8_FILE = "model-int8.onnx"
# Below this the quantised tower changes rankings visibly. Measured for issue 21 on the
# check images: ViT-B-32 0.9998 (kept); EfficientNet-Lite0 0.56 (refused: its depthwise
# convolutions do not survive per-tensor int8 weights; bf16 suits it instead).
MIN_COSINE = 0.98


class QuantizeError(RuntimeError):
    """The tower could not be quantised, or its int8 copy drifts too far."""


def int8_ready(folder: Path) -> bool:
    """A checked int8 copy of the export in ``folder`` is in place."""
    try:
        meta = cache.read_meta(folder).get("int8")
        size = (folder / INT8_FILE).stat().st_size
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("bytes") == size and bool(meta.get("ok"))


def make_int8(folder: Path, check: Any) -> dict[str, Any]:
    """Quantise ``folder/model.onnx`` into ``folder/model-int8.onnx`` and compare it with
    the fp32 graph on ``check`` pixels ((n, 3, S, S) float32). Returns the meta record;
    raises :class:`QuantizeError` when it cannot be made or drifts below the floor."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = folder / f".{INT8_FILE}.{os.getpid()}.tmp"
    try:
        try:
            # its shape inference logs a warning per tensor it cannot type (hundreds for
            # EfficientNet's padding) on the root logger
            logging.disable(logging.WARNING)
            quantize_dynamic(str(folder / "model.onnx"), str(tmp), weight_type=QuantType.QInt8)
        except Exception as e:
            raise QuantizeError(f"int8 quantisation failed: {cache.first_line(e)}") from e
        finally:
            logging.disable(logging.NOTSET)
        want = _run(folder / "model.onnx", check)
        got = _run(tmp, check)
        cos = np.sum(cache.l2_normalize(want) * cache.l2_normalize(got), axis=1)
        record = {
            "bytes": tmp.stat().st_size,
            "method": "onnxruntime quantize_dynamic, int8 weights, per-batch activations",
            "check_images": len(check),
            "min_cosine": round(float(cos.min()), 6),
            "mean_cosine": round(float(cos.mean()), 6),
            "ok": bool(cos.min() >= MIN_COSINE),
        }
        if not record["ok"]:
            raise QuantizeError(
                f"the int8 image tower drifts too far from fp32 (min cosine "
                f"{record['min_cosine']:.4f} < {MIN_COSINE} on the check images); "
                "use --precision fp32 or bf16 for this model"
            )
        os.replace(tmp, folder / INT8_FILE)
        meta = cache.read_meta(folder)
        meta["int8"] = record
        cache.write_meta(folder, meta)
        return record
    finally:
        tmp.unlink(missing_ok=True)


def _run(model: Path, pixels: np.ndarray) -> np.ndarray:
    session = cache.load_session(model).result()
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: pixels})[0], np.float32)
