"""On-disk cache of zero-shot label embeddings (issue 15: ``classify`` with 100 labels x 80
templates spent 70 s embedding the same 8,000 prompts on every run).

Key: the encoder's spec (its whole manifest entry: weights' sha256 or pretrained tag,
dimension, ASIF anchors and powers), what is stored (``mean``: per-label means of the
prompt embeddings; ``prompts``: every prompt's embedding) and the prompts themselves, in
order -- so any change of encoder, labels or templates is a different entry. Files live
in ``<cache>/label-embeddings/`` ($XDG_CACHE_HOME respected), written to a temporary
file and renamed into place, so readers never see half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlmsearch.runtime import cache_dir

FORMAT = 1
ENV_SWITCH = "VLMSEARCH_LABEL_CACHE"  # 0 turns the cache off (benchmarks)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_key(spec: dict[str, Any], what: str, prompts: Sequence[str]) -> str:
    blob = json.dumps(
        {"format": FORMAT, "spec": spec, "what": what, "prompts": list(prompts)},
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:40]


def cached(
    spec: dict[str, Any] | None,
    what: str,
    prompts: Sequence[str],
    compute: Callable[[], np.ndarray],
) -> np.ndarray:
    """``compute()``, read from the cache when it was stored before (``spec`` None: no
    caching). A damaged or unreadable entry is recomputed; a failed write is ignored."""
    if spec is None or not enabled():
        return compute()
    path = cache_dir() / "label-embeddings" / f"{cache_key(spec, what, prompts)}.npy"
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        pass
    value = np.ascontiguousarray(compute(), np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, value, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass
    return value


class LazyTextEmbedder:
    """A text embedder built on first use: when every label embedding is cached, the
    text encoder (torch or its ONNX export) is never loaded."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._enc: Any = None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self._enc is None:
            self._enc = self._build()
        return np.asarray(self._enc.encode_texts(texts), np.float32)
