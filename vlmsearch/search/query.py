"""Query building: weighted texts and images, minus weighted negatives, into one vector.

A term may carry a weight prefix in rclip's style, ``"2:golden retriever"`` or
``"0.5:./beach.jpg"``; a prefix that is not a number is part of the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import QueryError
from vlmsearch.models.encoders.base import Encoder, TextEmbedder

if TYPE_CHECKING:
    from vlmsearch.storage.reader import CollectionReader


@dataclass(frozen=True)
class Term:
    kind: str  # "text" or "image"
    value: Any  # str for text; a path or a PIL image for images
    weight: float = 1.0


def parse_weight(term: str) -> tuple[float, str]:
    head, sep, rest = term.partition(":")
    if sep and rest:
        try:
            return float(head), rest
        except ValueError:
            pass
    return 1.0, term


def _image_weight(im: Any) -> tuple[float, Any]:
    """A path takes a ``"W:path"`` prefix; a decoded image is weighted as ``(W, image)``."""
    if isinstance(im, str):
        return parse_weight(im)
    if isinstance(im, tuple) and len(im) == 2 and isinstance(im[0], int | float):
        return float(im[0]), im[1]
    return 1.0, im


def _text_term(term: str, what: str) -> tuple[float, str]:
    """(weight, text); an empty or blank text is refused: its embedding is a point that
    every image is near by chance, so it would rank them all without meaning."""
    w, v = parse_weight(str(term))
    if not v.strip():
        raise QueryError(f"empty {what} text {term!r}: give words to search for")
    return w, v


def build_terms(
    texts: Sequence[str] = (),
    images: Sequence[Any] = (),
    negatives: Sequence[str] = (),
    negative_images: Sequence[Any] = (),
) -> list[Term]:
    terms: list[Term] = []
    for t in texts:
        w, v = _text_term(t, "query")
        terms.append(Term("text", v, w))
    for im in images:
        w, v = _image_weight(im)
        terms.append(Term("image", v, w))
    for t in negatives:
        w, v = _text_term(t, "negative")
        terms.append(Term("text", v, -w))
    for im in negative_images:
        w, v = _image_weight(im)
        terms.append(Term("image", v, -w))
    if not any(t.weight > 0 for t in terms):
        raise QueryError(
            "empty query: give a text, --image, or both (negatives alone rank nothing)"
        )
    return terms


def decode_images(terms: Sequence[Term]) -> list[Term]:
    """The terms with every image path read and decoded now (PIL, no model): a missing or
    undecodable query image is refused before any encoder is built."""
    from vlmsearch.imaging.decode import ImageDecodeError, load_image

    out = []
    for t in terms:
        if t.kind == "image" and isinstance(t.value, str | Path):
            try:
                t = Term("image", load_image(t.value), t.weight)
            except ImageDecodeError as e:
                raise QueryError(f"query image: {e}") from None
        out.append(t)
    return out


def query_vector(encoder: Encoder | TextEmbedder, terms: Sequence[Term]) -> np.ndarray:
    """sum(w_i * e_i) over L2-normalised term embeddings, L2-normalised again (image terms
    need an :class:`Encoder`)."""
    texts = [t for t in terms if t.kind == "text"]
    images = [t for t in decode_images(terms) if t.kind == "image"]
    vec = np.zeros(encoder.dim, np.float32)
    if texts:
        emb = encoder.encode_texts([t.value for t in texts])
        vec += np.asarray([t.weight for t in texts], np.float32) @ emb
    if images:
        emb = encoder.encode_images([t.value for t in images])  # type: ignore[union-attr]
        vec += np.asarray([t.weight for t in images], np.float32) @ emb
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not np.isfinite(norm):
        raise QueryError("the query terms cancel out; adjust the weights")
    return vec / norm


def search_terms(
    reader: CollectionReader,
    k: int,
    text: Any = None,
    image: Any = None,
    negative: Any = None,
    negative_image: Any = None,
) -> list[Term]:
    """The terms of a search (each argument one value or a sequence), with the collection
    and ``k`` checked and query images decoded: all before any model is built."""
    terms = build_terms(
        _as_list(text), _as_list(image), _as_list(negative), _as_list(negative_image)
    )
    reader.require_vectors()
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")
    return decode_images(terms)


def positive_text(terms: Sequence[Term]) -> str | None:
    """The query's positive texts as one string (what a reranker reads), or None."""
    texts = [str(t.value) for t in terms if t.kind == "text" and t.weight > 0]
    return " ".join(texts) or None


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, str | Path) or not isinstance(x, Sequence):
        return [x]
    return list(x)
