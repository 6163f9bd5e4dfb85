"""Which collection a command uses: ``--collection``, ``$VLMSEARCH_COLLECTION``, the
nearest ``.vlmsearch`` at or above the working directory, or the one indexed last.

In storage (not at the bottom) because it reads the layout's names; the CLI and the
server import it without loading anything heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmsearch.errors import CollectionError
from vlmsearch.runtime import state_dir
from vlmsearch.storage.layout import DEFAULT_DIRNAME, find_collection


def remember(path: Path) -> None:
    """Record ``path`` as the collection indexed last (best effort: a read-only home is
    no reason to fail an index run)."""
    try:
        d = state_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / "last-collection").write_text(str(path), encoding="utf-8")
    except OSError:
        pass


def resolve_collection_path(path: str | Path | None) -> Path:
    """--collection, else $VLMSEARCH_COLLECTION, else .vlmsearch at or above the cwd,
    else the collection indexed last."""
    return locate_collection(path)[0]


def locate_collection(path: str | Path | None) -> tuple[Path, str]:
    """The collection a command uses and why: ``(path, source)``, where source says which
    rule chose it (``--collection``, ``$VLMSEARCH_COLLECTION``, ``nearest``, ``last indexed``)."""
    if path:
        p = Path(path).expanduser()
        # an indexed folder stands for the collection inside it
        if (
            not (p / "manifest.json").is_file()
            and (p / DEFAULT_DIRNAME / "manifest.json").is_file()
        ):
            return p / DEFAULT_DIRNAME, "--collection"
        return p, "--collection"
    env = os.environ.get("VLMSEARCH_COLLECTION")
    if env:
        return Path(env).expanduser(), "$VLMSEARCH_COLLECTION"
    found = find_collection()
    if found is not None:
        return found, "nearest"
    last = state_dir() / "last-collection"
    if last.is_file():
        p = Path(last.read_text(encoding="utf-8").strip())
        if (p / "manifest.json").is_file():
            return p, "last indexed"
    raise CollectionError(
        "no collection given: pass --collection PATH, set VLMSEARCH_COLLECTION, "
        "or run `vlmsearch index DIR` first"
    )
