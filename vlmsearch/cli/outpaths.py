"""Output files (``--html``, ``--parquet``): checked before a command does any work, so a
mistyped path fails in a second with one line instead of a traceback after minutes of
encoding, and nothing else the command writes is left behind half done.

A page (``--html``) never replaces a file that is not a page (``--html photo.jpg`` once
turned an image into HTML), nor any file inside the indexed folder: see
:func:`check_page_file` and :func:`check_outside_root`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vlmsearch.errors import VlmsearchError
from vlmsearch.safe_open import is_inside

T = TypeVar("T")


def check_output_file(path: Path | None, option: str) -> Path | None:
    """``path`` made absolute, once it is known that a file can be written there: not a
    folder, in a folder that exists and is writable, and not a read-only file."""
    if path is None:
        return None
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise VlmsearchError(f"{option} {path} is a folder; give a file name, e.g. {p / 'out'}")
    parent = p.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise VlmsearchError(f"cannot write {option} {path}: the folder {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VlmsearchError(f"cannot write {option} {path}: the folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise VlmsearchError(f"cannot write {option} {path}: the file is not writable")
    return p


PAGE_SUFFIXES = (".html", ".htm")


def check_page_file(path: Path | None, option: str = "--html") -> Path | None:
    """:func:`check_output_file` for an HTML page, which also refuses an existing file
    (or the file a link points to) whose name does not end in .html or .htm: an image, a
    CSV, a file with no extension."""
    p = check_output_file(path, option)
    if p is None:
        return None
    for q in (p, Path(os.path.realpath(p))):
        if q.exists() and q.suffix.lower() not in PAGE_SUFFIXES:
            raise VlmsearchError(
                f"{option} {path} is an existing file that is not a page ({q.name}): "
                "refusing to overwrite it; give a new file name ending in .html"
            )
    return p


def check_outside_root(path: Path | None, option: str, root: Path | str) -> None:
    """Refuse an existing file inside the indexed folder ``root`` (checked once the
    collection is open, before it does any work): its files are the user's."""
    if path is None or not (path.exists() or path.is_symlink()):
        return
    # by its folder: a link inside the root is itself the user's, wherever it points
    if is_inside(path.parent, os.path.realpath(root)):
        raise VlmsearchError(
            f"{option} {path} is a file inside the indexed folder {root}: refusing to "
            "overwrite it; give a new file name, or write the page elsewhere"
        )


def write_output(path: Path, option: str, write: Callable[[Path], T]) -> T:
    """Run ``write(path)``; an OS error (disk full, a folder removed meanwhile) becomes a
    one-line user error."""
    try:
        return write(path)
    except OSError as e:
        raise VlmsearchError(f"cannot write {option} {path}: {e.strerror or e}") from None
