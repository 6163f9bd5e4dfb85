"""Open a file that must lie inside a folder, without being led out of it by a link.

The server reads files named by metadata that anyone who can write into the indexed
folder influences: an indexed image replaced by a symlink to ``/etc/shadow`` must not be
served. :func:`open_inside` resolves the path once, refuses it unless the result lies
inside the folder's real path, then opens that resolved path one component at a time with
``O_NOFOLLOW`` from a descriptor of the folder. A link swapped in after the check makes the
open fail instead of being followed, and what was opened is checked with ``fstat`` (the
descriptor, not the name: no race between the check and the read).

Policy, shared with :mod:`vlmsearch.imaging.scan`: links (to files or folders) inside the
folder are followed only when they resolve inside it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# A FIFO swapped in would block open() for reading until a writer comes: never wait.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CHUNK = 256 * 1024


class UnsafeFile(OSError):
    """The path leads outside the folder, or to something that is not a regular file."""


def is_inside(path: str | bytes, root_real: str | bytes) -> bool:
    """Whether the real path of ``path`` is ``root_real`` or lies below it."""
    real = os.fsdecode(os.path.realpath(path))
    root = os.fsdecode(root_real).rstrip(os.sep) or os.sep
    return real == root or real.startswith(root if root == os.sep else root + os.sep)


def open_inside(root: str | Path, rel: str) -> tuple[int, os.stat_result]:
    """(descriptor, its fstat) of the regular file ``rel`` inside ``root``; the caller
    closes it. Raises :class:`UnsafeFile`, or OSError (e.g. FileNotFoundError)."""
    root_real = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root_real, rel))
    if not is_inside(target, root_real) or target == root_real:
        raise UnsafeFile(f"{rel} resolves outside {root}")
    parts = Path(os.path.relpath(target, root_real)).parts
    if os.open in os.supports_dir_fd:
        fd = _open_walk(root_real, parts)
    else:  # no openat (Windows): the resolved path, still not following a final link
        fd = os.open(target, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{rel} is not a regular file")
        if _O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _open_walk(root_real: str, parts: tuple[str, ...]) -> int:
    """openat() each component from the root's descriptor, following no link at all."""
    dfd = os.open(root_real, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, getattr(errno, "EMLINK", -1)):
            raise UnsafeFile(f"{os.path.join(*parts)} became a link") from e  # swapped since
        raise
    finally:
        os.close(dfd)


def read_fd(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from ``fd`` (the size the file had when it was checked)."""
    chunks, left = [], limit
    while left > 0:
        b = os.read(fd, min(CHUNK, left))
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def iter_fd(fd: int, limit: int) -> Iterator[bytes]:
    """Yield at most ``limit`` bytes from ``fd`` in chunks, closing it at the end."""
    try:
        left = limit
        while left > 0:
            b = os.read(fd, min(CHUNK, left))
            if not b:
                break
            left -= len(b)
            yield b
    finally:
        os.close(fd)
