"""A collection's directory: manifest, metadata, vector shards, FAISS index, lock.

Commit protocol: every data file is written under a new, generation-numbered name
(temp file + fsync + rename); the manifest is replaced last, atomically. A reader
loads the manifest once and then only files it names, so a crash at any moment
leaves the previous commit readable. Files a commit stops naming are recorded in its
manifest as retired and deleted by a later commit once they are old enough for readers
to have finished with them (see gc.py). A directory is a collection once it has a
manifest: a new collection commits an empty one before writing anything else, and a
writer refuses an existing folder without one unless it is empty.

Layout::

    <collection>/
      manifest.json
      seg-000005.parquet, tomb-000007.parquet, col-000009.parquet   (format 2: segments.py)
      index-000007.faiss
      textvec-000008-1a2b3c4d.npz     (embedded text columns, see text_vectors.py)
      student-000009.pt               (region reranking student, see region_student.py)
      vectors/shard-000003.ids.npy, vectors/shard-000003.f16.npy, ...
      .lock
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmsearch._version import __version__
from vlmsearch.errors import CollectionError
from vlmsearch.storage import gc
from vlmsearch.storage.atomic import atomic_write_text, is_temp_name
from vlmsearch.storage.integrity import check_manifest
from vlmsearch.storage.lock import LOCK_NAME, WriterLock, being_created
from vlmsearch.storage.nospace import commit_guard

__all__ = ["Layout", "WriterLock", "default_collection_for", "find_collection", "now_iso"]

FORMAT_VERSION = 2  # what this version writes (docs/on-disk-format.md)
READABLE_FORMATS = (1, 2)  # format 1 is read in place and migrated by its next commit
MANIFEST = "manifest.json"
DEFAULT_DIRNAME = ".vlmsearch"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Layout:
    """Paths and commit/lock mechanics of one collection directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self.vectors_dir = self.path / "vectors"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.path.exists():
            raise CollectionError(
                f"no collection at {self.path} (run `vlmsearch index DIR` first, "
                "or pass --collection PATH)"
            )
        if not self.exists():
            raise CollectionError(
                being_created(self.path)
                or f"{self.path} is not a vlmsearch collection (no {MANIFEST})"
            )
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CollectionError(
                f"cannot read {self.manifest_path}: {e}; re-index with "
                f"`vlmsearch index FOLDER --rebuild -c {self.path}`"
            ) from None
        if not isinstance(manifest, dict):
            check_manifest(manifest, self.manifest_path)  # raises: not a JSON object
        version = manifest.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise CollectionError(
                f"{self.path} has collection format {version}, newer than this vlmsearch "
                f"({__version__}) reads (formats {READABLE_FORMATS[0]} to {FORMAT_VERSION}); "
                "upgrade vlmsearch to open it (it is left untouched)"
            )
        if version not in READABLE_FORMATS:
            raise CollectionError(
                f"{self.path} has collection format {version!r}; this vlmsearch "
                f"({__version__}) reads formats {READABLE_FORMATS[0]} to {FORMAT_VERSION}. "
                "Re-index with --rebuild."
            )
        check_manifest(manifest, self.manifest_path)
        return manifest

    def file(self, name: str) -> Path:
        return self.path / name

    # -- writing ------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Refuse to write into an existing folder that is not a collection (no manifest)
        and holds anything but what a first run leaves before its first commit: a writer
        there could overwrite the user's files."""
        if self.exists() or not os.path.lexists(self.path):
            return
        if not self.path.is_dir():
            raise CollectionError(f"{self.path} exists and is not a directory")
        others = sorted(p.name for p in self.path.iterdir() if not _left_by_first_run(p))
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise CollectionError(
                f"{self.path} is not empty and is not a vlmsearch collection (it holds "
                f"{others[0]!r}{more}); pass a new or empty folder to --collection"
            )

    def prepare(self) -> None:
        self.check_writable()
        self.path.mkdir(parents=True, exist_ok=True)
        if self.vectors_dir.is_symlink() or (
            self.vectors_dir.exists() and not self.vectors_dir.is_dir()
        ):
            raise CollectionError(
                f"{self.vectors_dir} is not a folder (a symbolic link or a file); a "
                "collection writes its vectors only into its own folder"
            )
        self.vectors_dir.mkdir(exist_ok=True)

    def write_manifest(
        self, manifest: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> None:
        """Commit: replace the manifest atomically, then delete what is old enough.

        What is retired is worked out against the manifest being replaced, read from disk
        (``previous`` stands in when it cannot be read)."""
        replaced = self._committed() or previous
        manifest["updated_at"] = now_iso()
        manifest["vlmsearch_version"] = __version__
        expired = gc.retire(self.path, manifest, replaced, time.time())
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
        gc.delete(self.path, expired)

    def _committed(self) -> dict[str, Any] | None:
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    @contextlib.contextmanager
    def lock(self, wait_s: float = 0.0) -> Iterator[WriterLock]:
        """The writer lock, for one writer's work; a full disk in it becomes one line.
        ``wait_s``: how long to wait for another writer (default: fail at once)."""
        with WriterLock(self.path / LOCK_NAME, wait_s) as held, commit_guard(self.path):
            yield held


def _left_by_first_run(p: Path) -> bool:
    # a first run writes nothing else before its empty manifest
    if p.name == LOCK_NAME or is_temp_name(p.name):
        return True
    if p.name == "vectors" and p.is_dir() and not p.is_symlink():
        return all(is_temp_name(q.name) for q in p.iterdir())
    return False


def is_collection_dir(names: set[str] | frozenset[str]) -> bool:
    """Whether a folder listing ``names`` is a collection's own folder (its manifest
    beside its lock or vector shards): scans skip such folders, whose Parquet files are
    metadata, not images."""
    return MANIFEST in names and (LOCK_NAME in names or "vectors" in names)


def default_collection_for(root: str | Path) -> Path:
    return Path(root).expanduser().absolute() / DEFAULT_DIRNAME


def find_collection(start: str | Path | None = None) -> Path | None:
    """The nearest ``.vlmsearch`` directory at or above ``start`` (default: cwd)."""
    here = Path(start or os.getcwd()).absolute()
    for d in (here, *here.parents):
        cand = d / DEFAULT_DIRNAME
        if (cand / MANIFEST).is_file():
            return cand
    return None


def set_manifest_key(layout: Layout, key: str, value: Any, wait_s: float = 60.0) -> None:
    """Commit one top-level manifest setting (e.g. a score calibration) under the writer
    lock; nothing else changes, so no file is retired."""
    with layout.lock(wait_s):
        manifest = layout.read_manifest()
        manifest[key] = value
        layout.write_manifest(manifest, manifest)
