"""Recursive directory scan: which image files exist, with size and mtime."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vlmsearch.safe_open import is_inside

DEFAULT_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".jfif",
    ".ppm",
)


@dataclass(frozen=True)
class ScannedFile:
    path: str  # POSIX path relative to the scan root
    size: int
    mtime_ns: int


def normalise_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    if not extensions:
        return DEFAULT_EXTENSIONS
    return tuple(sorted({("." + e.strip().lstrip(".")).lower() for e in extensions if e.strip()}))


def scan(
    root: str | Path,
    extensions: Iterable[str] | None = None,
    include_hidden: bool = False,
    exclude: Iterable[str | Path] = (),
) -> Iterator[ScannedFile]:
    """Yield image files under ``root`` in a stable (sorted) order.

    Symlinked directories are followed once each: a directory whose real path was
    already visited is skipped, which breaks symlink loops. Links (to folders or files)
    that resolve outside ``root`` are skipped: the server serves only files inside the
    root (:mod:`vlmsearch.safe_open`), and the index must not promise others.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    exts = normalise_extensions(extensions)
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()
    stack = [str(root)]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen or real in excluded:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink() and not is_inside(entry.path, root_real):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    subdirs.append(entry.path)
                elif entry.is_file(follow_symlinks=True) and entry.name.lower().endswith(exts):
                    st = entry.stat(follow_symlinks=True)
                    rel = Path(entry.path).relative_to(root).as_posix()
                    yield ScannedFile(rel, st.st_size, st.st_mtime_ns)
            except OSError:
                continue  # vanished or unreadable directory entry
        stack.extend(reversed(subdirs))
