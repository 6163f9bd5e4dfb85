"""Keep the torch-free query exports of a collection's encoder in place after indexing.

Which exports an encoder needs is read from its manifest spec (``Encoder.text_export_spec``
and ``image_export_spec``), so a re-index finds them cached without building the model or
importing torch; the encoder is built only when an export is missing (issue 15: a
no-change re-index in well under 1.5 s).
"""

from __future__ import annotations

from vlmsearch.models.encoders import DEFAULT_KIND, encoder_class
from vlmsearch.models.lazy_encoder import LazyEncoder


def prepare_query_exports(source: LazyEncoder) -> list[str]:
    """Export what is missing; returns one-line notices for queries that will use torch."""
    from vlmsearch.models.onnx import image_tower, text_tower

    # a loaded encoder may be one the registry does not know (built by the caller)
    loaded = source.loaded
    kind = source.spec.get("kind", DEFAULT_KIND)
    cls = type(loaded) if loaded is not None else encoder_class(kind)
    notes: list[str] = []
    text_spec = cls.text_export_spec(source.spec)
    if text_spec is not None and not text_tower.export_ready(text_spec):
        note = text_tower.prepare_text_queries(source.get())
        if note:
            notes.append(note)
    image_spec = cls.image_export_spec(source.spec)
    if image_spec is not None and not image_tower.export_ready(image_spec):
        hook = source.get().onnx_image_export()
        note = image_tower.prepare_image_queries(*hook) if hook else None
        if note:
            notes.append(note)
    elif image_spec is not None and loaded is not None and image_tower.needs_engine(image_spec):
        # an export made before index runs timed the engines: timed now, while the torch
        # encoder is loaded anyway, so the next run can encode through it
        hook = loaded.onnx_image_export()
        if hook:
            image_tower.record_engine(*hook)
    return notes
