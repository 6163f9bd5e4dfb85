"""An encoder known by its spec and built only when something must be encoded.

A re-index with nothing new, or a query whose arguments are wrong, should not pay for
importing torch (and sentence-transformers) and building a model: seconds, against
milliseconds for the scan and the checks (issue 15). The manifest's spec is enough to
compare encoders and to find cached ONNX exports; the model itself loads on :meth:`get`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.models.encoders.base import Encoder


class LazyEncoder:
    """``spec`` now, the :class:`Encoder` on first :meth:`get` (timed in ``load_seconds``)."""

    def __init__(
        self, spec: dict[str, Any], load: Callable[[], Encoder], device: str | None = None
    ) -> None:
        self.spec = dict(spec)
        self._load = load
        self.device = device  # what ``load`` is asked for (None: auto)
        self._encoder: Encoder | None = None
        self.load_seconds = 0.0

    @classmethod
    def ready(cls, encoder: Encoder) -> LazyEncoder:
        """Wrap an encoder that is already loaded."""
        lazy = cls(encoder.spec, lambda: encoder, encoder_device(encoder))
        lazy._encoder = encoder
        return lazy

    @property
    def loaded(self) -> Encoder | None:
        """The encoder when it has been built, else None."""
        return self._encoder

    def get(self) -> Encoder:
        if self._encoder is None:
            t0 = time.perf_counter()
            enc = self._load()
            self.load_seconds += time.perf_counter() - t0
            if Encoder.identity(enc.spec) != Encoder.identity(self.spec):
                raise ModelError(
                    f"the encoder built for {self.spec.get('name')} is "
                    f"{enc.spec.get('name')}; their embeddings are not comparable"
                )
            self._encoder = enc
        return self._encoder


def as_lazy(encoder: Encoder | LazyEncoder) -> LazyEncoder:
    return encoder if isinstance(encoder, LazyEncoder) else LazyEncoder.ready(encoder)


def encoder_device(encoder: Any) -> str:
    """The device a built encoder runs on (an ASIF encoder's is its image encoder's)."""
    device = getattr(encoder, "device", None)
    if device is None:
        device = getattr(getattr(encoder, "image_encoder", None), "device", None)
    return str(device) if device is not None else "cpu"
