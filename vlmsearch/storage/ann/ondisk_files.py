"""An on-disk index as committed files, and how a commit writes them.

The manifest's ``index`` entry names the header (``file``) and, under ``ondisk``:

- ``ivfdata``: the merged lists (``index-G.ivfdata``), memory-mapped by readers;
- ``trained``: the trained, empty index the lists were built from (kept so that deltas
  and compactions reuse its quantizer, and other machines can add shards to it);
- ``deltas``: small IVF indexes of vectors added since (``index-H.delta.faiss``);
- ``dead``: ``index-H.dead.npy``, rows ``(id, part)``: copies of ``id`` in parts before
  ``part`` (0 = the base, 1.. = the deltas) are dead: deleted or re-encoded since.

Every file is written under a temporary name first and gets its generation name in
:meth:`StagedOnDisk.commit_as`, called by the commit just before the manifest is
replaced; so a crash anywhere leaves the last commit whole. Names nobody committed (a
crash between those renames and the manifest) are removed by :func:`sweep_orphans`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.storage.ann import ondisk
from vlmsearch.storage.atomic import TMP_PREFIX, TMP_SUFFIX, atomic_path, fsync_dir
from vlmsearch.storage.integrity import ondisk_index_files as entry_files

_ONDISK_NAME = re.compile(r"^index-\d+\.(ivfdata|trained\.faiss|delta\.faiss|dead\.npy|faiss)$")


def temp_file(directory: Path, what: str) -> Path:
    """A new temporary file in ``directory``, of the shape the commit's cleanup removes
    when a writer was killed before renaming it."""
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{what}.", suffix=TMP_SUFFIX, dir=directory)
    os.close(fd)
    return Path(name)


@dataclass
class StagedOnDisk:
    """An on-disk index ready to commit: new files written under temporary names, the
    committed files it keeps, and its size."""

    ntotal: int
    keep: dict[str, Any] = field(default_factory=dict)  # the old entry's names it keeps
    merged: Any = None  # a merged index whose lists are at ivfdata_tmp
    ivfdata_tmp: Path | None = None
    trained: Any = None  # to be written (a new build); None: keep["trained"]
    delta: Any = None  # a new delta index
    dead: np.ndarray | None = None  # (m, 2) rows to write; None: keep["dead"]
    source: Any = None  # the trained index the lists were built from

    def commit_as(self, directory: Path, gen: int) -> dict[str, Any]:
        """Give the staged files their generation-``gen`` names (lists first, header
        last); returns the manifest entry's ``file`` and ``ondisk``."""
        import faiss

        od = {k: self.keep.get(k) for k in ("ivfdata", "trained", "dead")}
        od["deltas"] = list(self.keep.get("deltas") or [])
        header = self.keep.get("file")
        if self.trained is not None:
            od["trained"] = f"index-{gen:06d}.trained.faiss"
            ondisk.write_trained(self.trained, directory / od["trained"])
        if self.delta is not None:
            name = f"index-{gen:06d}.delta.faiss"
            with atomic_path(directory / name) as tmp:
                faiss.write_index(self.delta, str(tmp))
            od["deltas"].append(name)
        if self.dead is not None:
            od["dead"] = None
            if len(self.dead):
                od["dead"] = f"index-{gen:06d}.dead.npy"
                dead = np.ascontiguousarray(self.dead, np.int64)
                with atomic_path(directory / od["dead"]) as tmp, open(tmp, "wb") as f:
                    np.save(f, dead)
        if self.merged is not None and self.ivfdata_tmp is not None:
            od["ivfdata"] = f"index-{gen:06d}.ivfdata"
            header = f"index-{gen:06d}.faiss"
            os.replace(self.ivfdata_tmp, directory / od["ivfdata"])
            fsync_dir(directory)
            ondisk.write_header(self.merged, directory / header, od["ivfdata"])
            self.merged = None  # unmaps the lists
        return {"file": header, "ondisk": od}


def read_dead(path: Path | None) -> np.ndarray:
    if path is None:
        return np.zeros((0, 2), np.int64)
    return np.asarray(np.load(path, allow_pickle=False), np.int64).reshape(-1, 2)


def add_dead(dead: np.ndarray, ids: np.ndarray, part: int) -> np.ndarray:
    """``dead`` with ``ids`` dead in every part before ``part`` (the larger part wins)."""
    rows = np.concatenate([dead, np.stack([ids, np.full(len(ids), part)], 1).astype(np.int64)])
    if len(rows) == 0:
        return rows
    order = np.lexsort((-rows[:, 1], rows[:, 0]))
    rows = rows[order]
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:, 0] != rows[:-1, 0]
    return rows[first]


def open_entry(directory: Path, entry: dict[str, Any], verify: Any) -> ondisk.OnDiskIndex:
    """The committed on-disk index ``entry`` names, searchable; ``verify(name, digest)``
    checks a file first (the lists by size only: hashing them would read them all)."""
    import faiss

    od = entry["ondisk"]
    verify(od["ivfdata"], False)
    parts = [ondisk.open_index(verify(entry["file"], True))]
    for name in od.get("deltas") or []:
        parts.append(faiss.read_index(str(verify(name, True))))
    dead = read_dead(verify(od["dead"], True) if od.get("dead") else None)
    per_part = [dead[dead[:, 1] > p, 0] for p in range(len(parts))]
    return ondisk.OnDiskIndex(parts, per_part, entry.get("ntotal"))


def sweep_orphans(directory: Path, manifest: dict[str, Any]) -> None:
    """Delete on-disk index files that no commit named: left by a writer killed between
    giving them their names and replacing the manifest. Call with the writer lock held."""
    known = set()
    entry = manifest.get("index") or {}
    known.update([entry.get("file"), *entry_files(entry)])
    for r in manifest.get("retired") or []:
        known.add(r.get("file") if isinstance(r, dict) else None)
    with contextlib.suppress(OSError):
        for p in directory.iterdir():
            if _ONDISK_NAME.match(p.name) and p.name not in known and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
