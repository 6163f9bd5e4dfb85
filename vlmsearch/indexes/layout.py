"""A collection's directory: manifest, metadata, vector shards, FAISS index, lock.

Commit protocol: every data file is written under a new, generation-numbered name
(temp file + fsync + rename); the manifest is replaced last, atomically. A reader
loads the manifest once and then only files it names, so a crash at any moment
leaves the previous commit readable. Files no longer named by the current or the
previous manifest are removed by the next writer (keeping the previous generation
lets a reader that opened it a moment ago finish loading).

Layout::

    <collection>/
      manifest.json
      metadata-000007.parquet
      index-000007.faiss
      textvec-000008-1a2b3c4d.npz     (embedded text columns, see text_vectors.py)
      student-000009.pt               (region reranking student, see region_student.py)
      vectors/shard-000003.ids.npy, vectors/shard-000003.f16.npy, ...
      .lock
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from vlmsearch._version import __version__
from vlmsearch.errors import CollectionError
from vlmsearch.indexes.atomic import atomic_write_text, fsync_dir
from vlmsearch.indexes.integrity import check_manifest

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_DIRNAME = ".vlmsearch"
_DATA_FILE = re.compile(
    r"^(metadata-\d+\.parquet|index-\d+\.(faiss|postings\.npz)|textvec-\d+-[0-9a-f]{8}\.npz|student-\d+\.pt)$"
)
_SHARD_FILE = re.compile(r"^(shard-\d+)\.(ids\.npy|f16\.npy|sparse\.npz)$")


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
            raise CollectionError(f"{self.path} is not a vlmsearch collection (no {MANIFEST})")
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
        if version != FORMAT_VERSION:
            raise CollectionError(
                f"{self.path} has collection format {version}; this vlmsearch "
                f"({__version__}) reads format {FORMAT_VERSION}. Re-index with --rebuild."
            )
        check_manifest(manifest, self.manifest_path)
        return manifest

    def file(self, name: str) -> Path:
        return self.path / name

    # -- writing ------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.vectors_dir.mkdir(exist_ok=True)

    def write_manifest(self, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Commit: replace the manifest atomically, then drop unreferenced files."""
        manifest["updated_at"] = now_iso()
        manifest["vlmsearch_version"] = __version__
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
        self.collect_garbage(manifest, previous)

    def collect_garbage(self, current: dict[str, Any], previous: dict[str, Any] | None) -> None:
        keep_files: set[str] = set()
        keep_shards: set[str] = set()
        for m in (current, previous):
            if not m:
                continue
            keep_files.update(referenced_files(m))
            keep_shards.update(m.get("shards", []))
        for p in self.path.iterdir():
            if (_DATA_FILE.match(p.name) and p.name not in keep_files) or _is_stale_tmp(p):
                with contextlib.suppress(OSError):
                    p.unlink()
        if self.vectors_dir.is_dir():
            for p in self.vectors_dir.iterdir():
                m = _SHARD_FILE.match(p.name)
                if (m and m.group(1) not in keep_shards) or _is_stale_tmp(p):
                    with contextlib.suppress(OSError):
                        p.unlink()
        fsync_dir(self.path)

    def lock(self) -> WriterLock:
        return WriterLock(self.path / ".lock")


def referenced_files(manifest: dict[str, Any]) -> set[str]:
    names = {manifest.get("metadata_file")}
    names.add((manifest.get("index") or {}).get("file"))
    for col in (manifest.get("text_vectors") or {}).values():
        names.add(col.get("file"))
    names.add((manifest.get("region_student") or {}).get("file"))
    return {n for n in names if n}


def _is_stale_tmp(p: Path) -> bool:
    # Temp files are only left behind by a writer that died; we hold the lock now.
    return p.name.startswith(".") and p.name.endswith(".tmp")


class WriterLock:
    """One writer at a time, via flock: the kernel releases it even after kill -9."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CollectionError(
                f"cannot write to collection {self.path.parent}: {e.strerror or e}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            raise CollectionError(
                f"collection {self.path.parent} is being written by another vlmsearch "
                f"process{holder}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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
