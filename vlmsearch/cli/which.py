"""Opening the collection a command works on, saying which one when the user did not."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vlmsearch.cli import output
from vlmsearch.cli.output import err

if TYPE_CHECKING:
    from vlmsearch.collection import Collection

_WHY = {
    "$VLMSEARCH_COLLECTION": "from $VLMSEARCH_COLLECTION",
    "nearest": "the nearest .vlmsearch folder",
    "last indexed": "the collection indexed last",
}


def open_collection(collection: Path | None, device: str | None, verb: str) -> Collection:
    """Open ``--collection`` or the default one; an implicit choice is named on stderr
    (``searching PATH (the collection indexed last; -c chooses another)``)."""
    from vlmsearch.collection import Collection
    from vlmsearch.storage.locate import locate_collection

    path, source = locate_collection(collection)
    if source in _WHY:
        err.print(
            f"{verb} {output.text(path)} ({_WHY[source]}; -c chooses another)", soft_wrap=True
        )
    return Collection.open(path, device=device)
