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

from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.encoders import DEFAULT_KIND, encoder_class
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.lazy_encoder import LazyEncoder, encoder_device
from vlmsearch.models.onnx.image_encoder import OnnxIndexEncoder
from vlmsearch.runtime import surely_cpu


def index_encoder(source: LazyEncoder, opts: IngestOptions) -> Encoder | OnnxIndexEncoder:
    """The ONNX index encoder when the rules above allow it, else the torch encoder
    (built now if it was not)."""
    if opts.ray is None and not opts.gpu_decode:
        fast = onnx_index_encoder(source)
        if fast is not None:
            return fast
    return source.get()


def onnx_index_encoder(source: LazyEncoder) -> OnnxIndexEncoder | None:
    """The cached export as an index encoder for ``source``'s spec, or None (torch)."""
    from vlmsearch.models.onnx import image_tower

    loaded = source.loaded
    device = encoder_device(loaded) if loaded is not None else source.device
    if not surely_cpu(device) or not image_tower.enabled():
        return None
    if not image_tower.runtime_available():
        return None
    spec = source.spec
    # a loaded encoder may be one the registry does not know (built by the caller)
    cls: Any = type(loaded) if loaded is not None else encoder_class(spec.get("kind", DEFAULT_KIND))
    tower_spec = cls.image_export_spec(spec)
    if tower_spec is None or image_tower.engine_choice(tower_spec) != "onnxruntime":
        return None
    try:
        queries = cls.image_query_encoder(spec, None)
    except Exception:  # an anchor set that cannot be read: the torch encoder says why
        return None
    if queries is None or not hasattr(queries, "from_features"):
        return None
    encoder = OnnxIndexEncoder(spec, queries, bool(cls.sparse_output))
    if encoder.load_error() is not None:
        return None  # a damaged model file: torch encodes, with the same vectors
    return encoder
