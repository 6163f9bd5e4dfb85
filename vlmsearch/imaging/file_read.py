"""Reading an image file's bytes with a type check and a size bound.

``Path.read_bytes()`` on a path a user names (``--image``, ``classify PATHS``, ``caption
PATH``) or on an indexed file that was swapped after the scan would hang forever on a FIFO,
exhaust memory on ``/dev/zero`` and read a 3 GB sparse file whole. Here the file is opened
with ``O_NONBLOCK`` (so opening a FIFO returns at once), checked with ``fstat`` on the open
descriptor (no race with a rename), refused unless it is a regular file of at most
:data:`MAX_FILE_BYTES`, and read with that bound even if it grows meanwhile.

Refusals are ``OSError`` with a readable ``strerror``, so every caller's existing handling
of unreadable files reports them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_FILE_BYTES = 1 << 30
"""The largest image file read (1 GiB): above any real photo or scan the decoder accepts
(a 179 Mpx uncompressed 8-bit RGB TIFF is 537 MB)."""

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_image_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``; OSError for anything else or anything larger
    than ``max_bytes``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", str(path))
        if st.st_size > max_bytes:
            raise OSError(errno.EFBIG, _too_large(f"{st.st_size} bytes", max_bytes), str(path))
        # One read of the expected size plus a byte (a file that grew shows the extra byte);
        # more reads only if the kernel returns less.
        data = os.read(fd, st.st_size + 1)
        while len(data) <= max_bytes:
            more = os.read(fd, min(max_bytes + 1 - len(data), 1 << 20))
            if not more:
                break
            data += more
        if len(data) > max_bytes:
            raise OSError(errno.EFBIG, _too_large("growing", max_bytes), str(path))
        return data
    finally:
        os.close(fd)


def _too_large(what: str, max_bytes: int) -> str:
    return f"file is over the {max_bytes}-byte limit for an image ({what})"
