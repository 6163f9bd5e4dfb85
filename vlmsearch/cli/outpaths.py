"""Output files (``--html``, ``--parquet``): checked before a command does any work, so a
mistyped path fails in a second with one line instead of a traceback after minutes of
encoding, and nothing else the command writes is left behind half done."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vlmsearch.errors import VlmsearchError

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


def write_output(path: Path, option: str, write: Callable[[Path], T]) -> T:
    """Run ``write(path)``; an OS error (disk full, a folder removed meanwhile) becomes a
    one-line user error."""
    try:
        return write(path)
    except OSError as e:
        raise VlmsearchError(f"cannot write {option} {path}: {e.strerror or e}") from None
