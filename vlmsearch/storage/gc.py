"""Garbage collection of a collection's old generations, by the manifest's own record.

Only files that some manifest of this collection named are ever deleted: a commit that
stops naming a file moves it to the new manifest's ``retired`` list with the time it was
retired, and a later commit deletes it once it has been retired for
:data:`RETAIN_SECONDS`. Files the user (or anyone) put into the directory are never
named, so never touched, whatever their names. Names are also checked against the
shapes vlmsearch writes (no ``..``, no other folders), since a collection directory
may come from elsewhere, and deletion does not follow a symlinked ``vectors`` folder.

Retention is by age rather than by generation count: a reader that opened the manifest
just before a commit has :data:`RETAIN_SECONDS` to open the files it names, however fast
commits follow (``classify --write-column`` commits in well under a second). Readers
also retry against the new manifest (see :mod:`vlmsearch.storage.snapshot`) for the rare
reader slower than that.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from vlmsearch.storage import segments
from vlmsearch.storage.atomic import fsync_dir, is_temp_name
from vlmsearch.storage.integrity import ondisk_index_files

RETAIN_SECONDS = 60.0
RETIRED = "retired"
VECTORS = "vectors"

_OWN_NAME = re.compile(
    r"^((?:metadata|seg|tomb|col)-\d+\.parquet|index-\d+\.(faiss|postings\.npz|ivfdata|trained\.faiss"
    r"|delta\.faiss|dead\.npy)|textvec-\d+-[0-9a-f]{8}\.npz"
    r"|student-\d+\.pt|vectors/shard-\d+\.(ids\.npy|f16\.npy|sparse\.npz))$"
)
_SHARD_SUFFIXES = (".ids.npy", ".f16.npy", ".sparse.npz")


def is_own_name(name: str) -> bool:
    """A file name (relative to the collection) of the shape vlmsearch writes."""
    return bool(_OWN_NAME.match(name))


def named_files(manifest: dict[str, Any] | None) -> set[str]:
    """Every file ``manifest`` names, relative to the collection directory."""
    if not manifest:
        return set()
    names = {manifest.get("metadata_file"), (manifest.get("index") or {}).get("file")}
    names.update(ondisk_index_files(manifest.get("index") or {}))
    for col in (manifest.get("text_vectors") or {}).values():
        names.add((col or {}).get("file"))
    names.add((manifest.get("region_student") or {}).get("file"))
    names.update(segments.files(manifest))
    for shard in manifest.get("shards") or []:
        names.update(f"{VECTORS}/{shard}{s}" for s in _SHARD_SUFFIXES)
    return {n for n in names if isinstance(n, str) and is_own_name(n)}


def retire(
    collection: Path,
    new: dict[str, Any],
    replaced: dict[str, Any] | None,
    now: float,
    retain: float | None = None,
) -> list[str]:
    """Record in ``new`` what it no longer names (and what ``replaced`` had retired), and
    return the retired files old enough to delete once ``new`` is committed."""
    retain = RETAIN_SECONDS if retain is None else retain
    since: dict[str, float] = {}
    for entry in (replaced or {}).get(RETIRED) or []:
        name = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(name, str) and is_own_name(name):
            t = entry.get("since")
            since[name] = float(t) if isinstance(t, int | float) else now
    for name in named_files(replaced):
        since.setdefault(name, now)
    for name in named_files(new):
        since.pop(name, None)  # named again: live, not retired
    # deleted files stay listed until a commit sees them gone: a crash between the
    # manifest and the deletion leaves nothing unrecorded
    since = {n: t for n, t in since.items() if os.path.lexists(collection / n)}
    new[RETIRED] = [{"file": n, "since": round(t, 3)} for n, t in sorted(since.items())]
    return sorted(n for n, t in since.items() if now - t >= retain)


def delete(collection: Path, names: list[str]) -> None:
    """Unlink retired files and this collection's stale temp files (the caller holds the
    writer lock, so no temp file is being written). Symlinks are removed, never followed."""
    top = _open_dir(collection, follow=True)  # the collection path itself is the user's
    if top is None:
        return
    try:
        sub = _open_dir(Path(VECTORS), follow=False, dir_fd=top)
        try:
            for name in names:
                folder, _, base = name.rpartition("/")
                fd = sub if folder == VECTORS else top
                if fd is not None and is_own_name(name):
                    with contextlib.suppress(OSError):
                        os.unlink(base, dir_fd=fd)
            for fd in (top, sub):
                if fd is None:
                    continue
                for base in os.listdir(fd):
                    if is_temp_name(base):
                        with contextlib.suppress(OSError):
                            os.unlink(base, dir_fd=fd)
        finally:
            if sub is not None:
                os.close(sub)
    finally:
        os.close(top)
    fsync_dir(collection)


def _open_dir(path: Path, follow: bool, dir_fd: int | None = None) -> int | None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except OSError:
        return None
