"""Index-time image encoding through the ONNX image tower, without torch (issue 21).

Indexing on a CPU spends its time in the image tower. Where the cached export of a
collection's tower is faster than torch (measured when it was made:
:func:`vlmsearch.models.onnx.image_tower.measure_engines`), the index run decodes with
Pillow and the export's numpy :class:`~vlmsearch.models.onnx.image_tower.Preprocess` in
worker processes (:mod:`vlmsearch.imaging.pool_decode`) and encodes here. The vectors are
the query side's: its ``from_features`` (L2 normalisation for open_clip, the anchors'
relative representations for ASIF) turns the tower's features into what the torch encoder
stores, so a collection indexed either way holds the same vectors (cosine >= 0.9999, the
export's check).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmsearch.models.onnx.image_tower import OnnxImageTower, Preprocess


class OnnxIndexEncoder:
    """What :func:`vlmsearch.ingest.encode.encode_changes` needs of an encoder -- ``spec``,
    ``dim``, ``sparse_output``, ``device`` and ``encode_pixels`` -- for numpy pixel batches
    as :attr:`preprocess` makes them. ``queries`` is the encoder kind's torch-free image
    query encoder (``image_query_encoder``), whose ``tower`` and ``from_features`` are used."""

    device = "cpu"

    def __init__(self, spec: dict[str, Any], queries: Any, sparse_output: bool) -> None:
        self.spec = dict(spec)
        self.queries = queries
        self.tower: OnnxImageTower = queries.tower  # on the engine the index run chose
        self.sparse_output = sparse_output

    @property
    def engine(self) -> str:
        return self.tower.engine

    @property
    def precision(self) -> str:
        return self.tower.precision

    @property
    def dim(self) -> int:
        return int(self.queries.dim)

    @property
    def preprocess(self) -> Preprocess:
        """PIL image -> float32 (3, S, S); picklable, for the decoding workers."""
        return self.tower.preprocess

    def load_error(self) -> str | None:
        """Why the export's session cannot be used (waits for it to load), or None."""
        return self.tower.load_error()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.queries.from_features(self.tower.run(pixels))
