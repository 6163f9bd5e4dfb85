"""Searching a text column from the server without writing to the collection.

The CLI embeds a column's new or changed texts once and commits them; the server never
commits (it reads what writers commit). Embeddings the collection lacks are made in memory
for the generation being served, at most ``max_text_embed`` texts; more than that is
refused with a message saying how to store them once from the command line.
"""

from __future__ import annotations

import threading
import weakref

from vlmsearch.collection import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.server.scheduling import BudgetExceeded

_refused: weakref.WeakKeyDictionary[Collection, set[str]] = weakref.WeakKeyDictionary()
_refused_lock = threading.Lock()


def prepare_text_column(coll: Collection, column: str, max_embed: int) -> None:
    """Bring ``column``'s embeddings up to date in memory (``coll`` is read-only), or raise
    CollectionError (409) when more than ``max_embed`` texts would need embedding."""
    with _refused_lock:
        refused = column in _refused.get(coll, ())
    budget = getattr(coll.encoder, "budget", None)
    if not refused and budget is not None:
        try:
            with budget(max_embed):
                coll.text_vectors(column)
            return
        except BudgetExceeded:
            with _refused_lock:
                _refused.setdefault(coll, set()).add(column)
    elif not refused:
        coll.text_vectors(column)
        return
    raise CollectionError(
        f"column {column!r} has more than {max_embed} texts without stored embeddings, and "
        "the server does not write to the collection: run "
        f"`vlmsearch search --collection {coll.path} --text-column {column} x` once "
        "to store them"
    )
