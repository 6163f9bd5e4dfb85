"""Encoder specs remembered by the model string they were built from (issue 21).

A new collection needs only its encoder's spec up front -- the manifest records it and the
cached ONNX exports are keyed by it -- and the model itself only where torch encodes. When
``vlmsearch index --model NAME`` built NAME before, its spec is read back from here, so an
index run whose image tower export is cached and chosen does not import torch or build
the model (about 8 s of ViT-B-32's start-up on the 2-core machine). A remembered spec is
used only after the encoder kind's ``check_spec`` accepts it (a checkpoint's sha256 still
matching, through the hash cache), and the real encoder is still built if anything needs
it, with the identity check of :class:`~vlmsearch.models.lazy_encoder.LazyEncoder`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.models.encoders import encoder_class
from vlmsearch.runtime import cache_dir

FORMAT = 1


def _path(kind: str, name: str, options: dict[str, Any]) -> Path:
    blob = json.dumps([FORMAT, kind, name, options], sort_keys=True, default=str)
    return cache_dir() / "specs" / (hashlib.sha256(blob.encode()).hexdigest()[:32] + ".json")


def remember(kind: str, name: str, options: dict[str, Any], spec: dict[str, Any]) -> None:
    """Keep ``spec`` as what ``name`` (with ``options``) builds; never raises."""
    path = _path(kind, name, options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"kind": kind, "name": name, "spec": spec}, default=str))
        os.replace(tmp, path)
    except OSError:
        pass


def recall(kind: str, name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The spec ``name`` built last time, if it still checks out; else None."""
    try:
        record = json.loads(_path(kind, name, options).read_text())
        spec = record["spec"]
        if record.get("name") != name or spec.get("kind") != kind:
            return None
        encoder_class(kind).check_spec(spec)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ModelError):
        return None
    return spec
