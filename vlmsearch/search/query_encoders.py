"""A collection's encoders for queries: its own (built on first use) and the torch-free
exports of its text and image towers (kept in place by
:func:`vlmsearch.ingest.query_exports.prepare_query_exports` when indexing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

from vlmsearch.models.choice import asif_defaults_from, parse_model_option
from vlmsearch.models.encoders import DEFAULT_KIND, encoder_class, encoder_from_spec, load_encoder
from vlmsearch.models.encoders.base import Encoder, TextEmbedder
from vlmsearch.search.preflight import model_matches
from vlmsearch.search.query import Term
from vlmsearch.storage.reader import CollectionReader

CPU = (None, "auto", "cpu")


class QueryEncoders:
    """What embeds a collection's queries. On the CPU, before the torch encoder is built,
    the ONNX exports of its towers (no torch import: a cold query takes about a second,
    not several); otherwise the collection's own encoder."""

    def __init__(
        self, reader: CollectionReader, device: str | None, notify: Callable[[str], None]
    ) -> None:
        self.reader, self.device, self.notify = reader, device, notify
        self.loaded: Encoder | None = None  # the collection's encoder, once built or given
        self.text_queries: TextEmbedder | Literal[False] | None = None  # False: none exported
        self.image_queries: Any = None  # the same for image queries (image_onnx)

    @property
    def encoder(self) -> Encoder:
        """The collection's own encoder, built on first use."""
        if self.loaded is None:
            self.loaded = encoder_from_spec(self.reader.manifest["encoder"], device=self.device)
        return self.loaded

    def for_terms(self, terms: Sequence[Term]) -> TextEmbedder:
        """The encoder for these query terms: :meth:`text` for text alone, else the image
        export (paired with the text one) or the collection's encoder."""
        if all(t.kind == "text" for t in terms):
            first = self.text_queries is None
            enc = self.text()
            if first and enc is self.text_queries:
                _ = self.reader.faiss_index  # loads while the ONNX session loads in its thread
            return enc
        light = self._images(any(t.kind == "text" for t in terms))
        return light if light is not None else self.encoder

    def text(self) -> TextEmbedder:
        """What embeds texts: the text tower's export on the CPU when there is one, else
        the collection's encoder."""
        if self.loaded is None and self.device in CPU:
            if self.text_queries is None:
                spec = self.reader.manifest["encoder"]
                cls = encoder_class(spec.get("kind", DEFAULT_KIND))
                self.text_queries = cls.text_query_encoder(spec) or False
            if self.text_queries:
                return self.text_queries
        return self.encoder

    def _images(self, with_text: bool) -> Any:
        """The image tower's export (with the text export when the query has texts), or
        None when the torch encoder is (or must be) used."""
        if self.loaded is not None or self.device not in CPU:
            return None
        texts = self.text() if with_text else None
        if self.loaded is not None:
            return None  # the text side needed torch: use it for the images too
        if self.image_queries is None:
            spec = self.reader.manifest["encoder"]
            cls = encoder_class(spec.get("kind", DEFAULT_KIND))
            self.image_queries = cls.image_query_encoder(spec, None) or False
            if self.image_queries:
                _ = self.reader.faiss_index  # loads while the ONNX session loads in its thread
                problem = self.image_queries.tower.load_error()
                if problem:  # a damaged export: torch it is
                    self.notify(f"image queries use torch (cached ONNX image tower: {problem})")
                    self.image_queries = False
        if not self.image_queries:
            return None
        if texts is None:
            return self.image_queries
        paired = copy.copy(self.image_queries)  # shared by concurrent server queries
        paired.texts = texts
        return paired


def encoder_for_model(
    manifest: dict[str, Any], model: str, kind: str, device: str | None
) -> Encoder | None:
    """The encoder a query ``--model`` asks for, or None when it is the collection's own
    (decided from names and file hashes where possible, building nothing); raises a
    mismatch error for another model."""
    asked, parsed = parse_model_option(model, None)  # "asif[:ANCHORS]" names ASIF
    kind = parsed or kind
    if model_matches(manifest, model, kind):
        return None
    options: dict[str, Any] = {}
    if kind == "asif":  # k, p and the towers are the collection's unless named
        asked, options = asif_defaults_from(manifest["encoder"], asked, None)
    assert asked is not None
    return load_encoder(asked, kind=kind, device=device, **options)
