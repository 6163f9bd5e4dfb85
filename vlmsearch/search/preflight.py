"""Argument checks that run before any model is built (issue 15: a wrong ``--image`` path,
``--model`` or ``--write-column`` used to be refused only after 8-16 s of model loading).

Each check reads the collection's manifest, its metadata or the named files; none imports
torch or builds an encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmsearch.errors import ModelError, QueryError

if TYPE_CHECKING:
    from vlmsearch.storage.reader import CollectionReader


def check_search(
    reader: CollectionReader,
    *,
    where: str | None,
    text_column: str | None,
    text_weight: float,
) -> None:
    """Everything about a search but the query terms (decoded separately) and the
    reranker (see :func:`vlmsearch.rerank.apply.load_for_search`)."""
    if text_column is not None:
        from vlmsearch.search.fused import check_text_column

        if not 0.0 <= text_weight <= 1.0:
            raise QueryError(f"the text weight must lie in [0, 1] (got {text_weight})")
        check_text_column(reader, text_column)
    if where and where.strip():
        reader.filter_ids(where)  # parses the filter; kept per table version, so not redone


def model_matches(manifest: dict[str, Any], model: str, kind: str) -> bool:
    """Whether query model ``model`` (of encoder ``kind``) is the collection's, decided from
    names and file hashes alone; raises a mismatch error when it is not. Returns False when
    only building the encoder can tell (kinds other than open_clip)."""
    spec = manifest["encoder"]
    if kind != spec.get("kind"):
        raise_mismatch(manifest, model)
    if kind != "open_clip":
        return False
    from pathlib import Path

    from vlmsearch.models.encoders.openclip import parse_model_name
    from vlmsearch.runtime import file_sha256

    arch, tag, ckpt = parse_model_name(model)
    if arch != spec.get("arch"):
        raise_mismatch(manifest, model)
    if ckpt is None:
        if tag != spec.get("pretrained") or spec.get("sha256"):
            raise_mismatch(manifest, model)
        return True
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    if file_sha256(path) != spec.get("sha256"):  # the hash is cached by path and mtime
        raise_mismatch(manifest, model)
    return True


def raise_mismatch(manifest: dict[str, Any], model: str) -> None:
    raise ModelError(
        f"model mismatch: the collection was built with "
        f"{manifest['encoder'].get('name')}, but the query asks for {model}; their embeddings "
        "are not comparable (drop --model, or re-index with --rebuild --model ...)"
    )
