"""Atomic file writes: write to a temp file in the same directory, fsync, rename.

Temp files are named ``.vlmsearch-<name>.<random>.tmp`` (:data:`TMP_PREFIX`), so that a
writer cleaning up after a crashed one removes only temp files vlmsearch made. A full
disk becomes :class:`~vlmsearch.storage.nospace.NoSpaceError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vlmsearch.storage.nospace import as_no_space

TMP_PREFIX = ".vlmsearch-"
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent
        )
    except OSError as e:
        raise as_no_space(e, path) or e from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; data files follow the umask
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        full = as_no_space(e, path) if isinstance(e, Exception) else None
        if full is not None:
            raise full from None
        raise
    fsync_dir(path.parent)


def is_temp_name(name: str) -> bool:
    """A temp file name that :func:`atomic_path` makes."""
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def fsync_dir(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
