"""Recursive directory scan: which image files exist, with size and mtime."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsearch.imaging.format_extensions import EXTENSIONS as PLUGIN_EXTENSIONS
from vlmsearch.safe_open import is_inside
from vlmsearch.storage.layout import is_collection_dir

# Pillow's formats, then the plugins' (HEIC, AVIF, camera RAW): those are scanned even
# without the ``formats`` extra, so each becomes an error row that names it.
PILLOW_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm",
)  # fmt: skip
DEFAULT_EXTENSIONS = (*PILLOW_EXTENSIONS, *PLUGIN_EXTENSIONS)


# The defaults before the format plugins: a collection that saved exactly these chose
# "the defaults", and later runs scan the current ones (HEIC, RAW...) as a new one would.
LEGACY_DEFAULT_EXTENSIONS = PILLOW_EXTENSIONS


def saved_extensions(saved: Iterable[str] | None) -> tuple[str, ...] | None:
    """A collection's saved extensions as a later run uses them (see above)."""
    if saved is None:
        return None
    saved = tuple(saved)
    return DEFAULT_EXTENSIONS if saved == LEGACY_DEFAULT_EXTENSIONS else saved


@dataclass(frozen=True)
class ScannedFile:
    path: str  # POSIX path relative to the scan root, OS form (vlmsearch.names)
    size: int
    mtime_ns: int
    # fields stored with the image: a dict (a Parquet row's other columns), or the names
    # of its sidecar files or members (``key.txt``, ``key.json``), read when its row is made
    extra: dict[str, Any] | tuple[str, ...] | None = field(default=None, compare=False)


SIDECARS = (".txt", ".json")  # img2dataset's caption and fields beside ``key.jpg``
Expand = Callable[[str, str, os.stat_result], "Iterable[ScannedFile] | None"]
"""(root, relative path, stat) → the items of a dataset container, or None when the
file is not one (see :mod:`vlmsearch.imaging.sources`)."""


def normalise_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    if not extensions:
        return DEFAULT_EXTENSIONS
    return tuple(sorted({("." + e.strip().lstrip(".")).lower() for e in extensions if e.strip()}))


@dataclass(frozen=True)
class ScanError:
    """A folder that could not be listed, or an entry that could not be examined: what
    is under ``path`` is unknown this time, which is not the same as gone."""

    path: str  # POSIX path relative to the scan root ("." for the root itself)
    message: str


def scan(
    root: str | Path,
    extensions: Iterable[str] | None = None,
    include_hidden: bool = False,
    exclude: Iterable[str | Path] = (),
    on_error: Callable[[ScanError], None] | None = None,
    expand: Expand | None = None,
) -> Iterator[ScannedFile]:
    """Yield image files under ``root`` in a stable (sorted) order.

    Symlinked directories are followed once each: a directory whose real path was
    already visited is skipped, which breaks symlink loops. Links (to folders or files)
    that resolve outside ``root`` are skipped: the server serves only files inside the
    root (:mod:`vlmsearch.safe_open`), and the index must not promise others. A folder
    that cannot be listed, or an entry that cannot be examined (permission denied, I/O
    error), goes to ``on_error`` and is skipped; one that vanished is simply not there.
    ``expand`` turns dataset containers (tar shards, Parquet files) into their items;
    an image with a ``.txt`` or ``.json`` of the same stem beside it carries their names
    in ``extra``.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    exts = normalise_extensions(extensions)
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()
    stack = [str(root)]

    def failed(path: str, what: str, e: OSError) -> None:
        if on_error is not None:
            rel = Path(path).relative_to(root).as_posix()
            on_error(ScanError(rel, f"{what} ({e.strerror or e})"))

    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen or real in excluded:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed since its parent was listed
        except OSError as e:
            failed(current, "cannot list folder", e)
            continue
        subdirs = []
        present = {e.name for e in entries}
        if is_collection_dir(present):
            continue  # another collection's files (its Parquet segments are no dataset)
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
                    yield ScannedFile(
                        rel, st.st_size, st.st_mtime_ns, sidecars(entry.name, present)
                    )
                elif expand is not None and entry.is_file(follow_symlinks=True):
                    rel = Path(entry.path).relative_to(root).as_posix()
                    items = expand(str(root), rel, entry.stat(follow_symlinks=True))
                    if items is not None:
                        yield from items
            except FileNotFoundError:
                continue  # vanished since the folder was listed
            except OSError as e:
                failed(entry.path, "cannot examine", e)
        stack.extend(reversed(subdirs))


def sidecars(name: str, present: set[str]) -> tuple[str, ...] | None:
    """The names of ``name``'s sidecars among ``present`` (same stem, :data:`SIDECARS`)."""
    stem = name.rsplit(".", 1)[0]
    found = tuple(stem + s for s in SIDECARS if stem + s in present)
    return found or None


def is_under(path: str, unknown: set[str]) -> bool:
    """Whether relative ``path`` is one of ``unknown`` or inside one of them (folders)."""
    if not unknown:
        return False
    parts = path.split("/")
    return any("/".join(parts[:n]) in unknown for n in range(1, len(parts) + 1))
