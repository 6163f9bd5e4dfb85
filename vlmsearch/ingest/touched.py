"""Telling touched files from changed ones before encoding.

A file whose modification time changed but whose size did not may hold the same bytes
(``touch``, a copy that did not keep times, a sync tool). Hashing such files before the
encode step, rather than in the decoders, means they are counted as unchanged, never
as "changed", and the encode step's progress total is the number of files it encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vlmsearch.imaging.decode import content_hash
from vlmsearch.imaging.item_read import read_item

_THREADS = 4  # reading and hashing release the GIL; a few threads keep a disk busy


def _same_bytes(path: Path, known_hash: str) -> bool:
    try:
        return content_hash(read_item(path)) == known_hash
    except OSError:
        return False  # unreadable now: the decoders record the error


def same_bytes(candidates: Sequence[tuple[Path, str]]) -> list[bool]:
    """For each (path, stored content hash), whether the file still has those bytes."""
    if len(candidates) <= 1:
        return [_same_bytes(p, h) for p, h in candidates]
    with ThreadPoolExecutor(min(_THREADS, len(candidates))) as pool:
        return list(pool.map(lambda c: _same_bytes(*c), candidates))
