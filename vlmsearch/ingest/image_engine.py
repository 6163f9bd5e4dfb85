"""Which engine encodes an index run's images: torch, or the cached ONNX export of the
image tower with onnxruntime (issue 21).

The export is used when all of these hold, and torch otherwise, with the same vectors:

- the encoder runs on the CPU (``--device cpu``, or auto on a machine with no GPU);
- onnxruntime is installed and ``VLMSEARCH_IMAGE_ONNX`` is not 0;
- the run decodes with Pillow in this machine's workers (not ``--gpu-decode``, ``--ray``);
- a checked export for the collection's encoder spec is cached and its recorded timing
  (``meta.json``'s ``engine``, :func:`vlmsearch.models.onnx.image_tower.measure_engines`)
  says onnxruntime is the faster;
- its session loads (a damaged model file means torch, silently).

Everything is read from the manifest's spec, so an existing collection whose export is
chosen indexes new files without importing torch or building the model.
"""

from __future__ import annotations

from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.encoders import DEFAULT_KIND, encoder_class
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.lazy_encoder import LazyEncoder, encoder_device
from vlmsearch.models.onnx import engines
from vlmsearch.models.onnx.image_encoder import OnnxIndexEncoder
from vlmsearch.models.onnx.quantize import QuantizeError
from vlmsearch.runtime import surely_cpu


def index_encoder(source: LazyEncoder, opts: IngestOptions) -> Encoder | OnnxIndexEncoder:
    """The ONNX index encoder when the rules above allow it, else the torch encoder
    (built now if it was not). ``opts.precision`` bf16 or int8 (asked for, never chosen
    here) always means the export: on OpenVINO in bf16, or its int8 copy on onnxruntime;
    a one-line :class:`ModelError` says why when that cannot be."""
    precision = opts.precision or "fp32"
    if precision != "fp32":
        return _reduced_encoder(source, opts, precision)
    if opts.ray is None and not opts.gpu_decode:
        fast = onnx_index_encoder(source)
        if fast is not None:
            return fast
    return source.get()


def check_precision(precision: str | None, device: str | None, opts: IngestOptions) -> None:
    """Refuse a reduced precision this run cannot give, before any model loads."""
    if precision in (None, "fp32"):
        return
    if precision not in engines.PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; expected fp32, bf16 or int8")
    where = "with --ray" if opts.ray is not None else None
    where = where or ("with --gpu-decode" if opts.gpu_decode else None)
    where = where or (None if surely_cpu(device) else f"on device {device or 'auto (a GPU)'}")
    if where:
        raise ModelError(
            f"--precision {precision} runs the exported image tower on this CPU; it is not "
            f"available {where} (use --device cpu, or leave out --precision)"
        )
    if not image_tower_module().enabled() or not image_tower_module().runtime_available():
        raise ModelError(
            f"--precision {precision} needs the ONNX image export (onnx and onnxruntime "
            f"installed, {image_tower_module().ENV_SWITCH} not 0)"
        )
    if precision == "bf16" and not (engines.openvino_available() and engines.cpu_has_bf16()):
        raise ModelError(
            "--precision bf16 needs OpenVINO (pip install openvino) and a CPU with bf16 "
            "instructions (AVX-512 BF16 or AMX); try --precision int8"
        )


def image_tower_module() -> Any:
    from vlmsearch.models.onnx import image_tower

    return image_tower


def _reduced_encoder(source: LazyEncoder, opts: IngestOptions, precision: str) -> OnnxIndexEncoder:
    check_precision(precision, source.device, opts)
    image_tower = image_tower_module()
    cls, spec = _encoder_class(source), source.spec
    tower_spec = cls.image_export_spec(spec)
    if tower_spec is None:
        raise ModelError(
            f"--precision {precision}: the image tower of {spec.get('name')} cannot be "
            "exported to ONNX, so it has no reduced-precision engine"
        )
    if not image_tower.export_ready(tower_spec):  # a first run: export before encoding
        hook = source.get().onnx_image_export()
        note = image_tower.prepare_image_queries(*hook) if hook else "no export hook"
        if note:
            raise ModelError(f"--precision {precision}: {note}")
    engine = engines.OPENVINO if precision == "bf16" else engines.ONNXRUNTIME
    try:
        image_tower.ensure_precision(tower_spec, precision)
    except QuantizeError as e:
        raise ModelError(str(e)) from e
    queries = cls.image_query_encoder(spec, None, engine=engine, precision=precision)
    if queries is None or not hasattr(queries, "from_features"):
        raise ModelError(f"--precision {precision}: the collection's image export is unusable")
    encoder = OnnxIndexEncoder(spec, queries, bool(cls.sparse_output))
    error = encoder.load_error()
    if error is not None:
        raise ModelError(f"--precision {precision}: the {engine} engine failed to load: {error}")
    return encoder


def _encoder_class(source: LazyEncoder) -> Any:
    loaded = source.loaded
    # a loaded encoder may be one the registry does not know (built by the caller)
    return (
        type(loaded) if loaded is not None else encoder_class(source.spec.get("kind", DEFAULT_KIND))
    )


def onnx_index_encoder(source: LazyEncoder) -> OnnxIndexEncoder | None:
    """The cached export as an index encoder for ``source``'s spec, or None (torch)."""
    image_tower = image_tower_module()
    loaded = source.loaded
    device = encoder_device(loaded) if loaded is not None else source.device
    if not surely_cpu(device) or not image_tower.enabled():
        return None
    if not image_tower.runtime_available():
        return None
    spec = source.spec
    cls = _encoder_class(source)
    tower_spec = cls.image_export_spec(spec)
    if tower_spec is None:
        return None
    engine = image_tower.engine_choice(tower_spec)
    if engine not in engines.ENGINES:
        return None
    try:
        queries = cls.image_query_encoder(spec, None, engine=engine)
    except Exception:  # an anchor set that cannot be read: the torch encoder says why
        return None
    if queries is None or not hasattr(queries, "from_features"):
        return None
    encoder = OnnxIndexEncoder(spec, queries, bool(cls.sparse_output))
    if encoder.load_error() is not None:
        return None  # a damaged model file: torch encodes, with the same vectors
    return encoder
