"""The writer lock of a collection: one writer at a time, via ``flock`` on ``.lock``.

The kernel releases an flock even after ``kill -9``. A collection directory may come from
elsewhere (copied, unpacked, shared), so its ``.lock`` is not trusted: it is opened
without following a symbolic link, must be a regular file, and is never written to or
truncated -- it could be a hard link to someone's file. The holder's pid, for the
"being written" message, comes from the kernel's lock table instead of the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from vlmsearch.errors import CollectionError

LOCK_NAME = ".lock"
_WAIT_STEP_S = 0.2  # how often a waiting writer tries the lock again


class WriterLock:
    """An exclusive flock on a collection's ``.lock`` file. With ``wait_s`` (seconds), a lock
    held by another writer is tried again every moment until then; without, it fails at once."""

    def __init__(self, path: Path, wait_s: float = 0.0) -> None:
        self.path = path
        self.wait_s = wait_s
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        fd = _open_lock(self.path)
        try:
            _take(fd, self.path, self.wait_s)
        except BaseException:  # refused, or Ctrl-C while waiting
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _take(fd: int, path: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(_WAIT_STEP_S, left))
    pid = holder_pid(fd)
    holder = f" (pid {pid})" if pid else ""
    waited = f"; waited {wait_s:g} s for it to finish" if wait_s > 0 else "; wait for it to finish"
    raise CollectionError(
        f"collection {path.parent} is being written by another vlmsearch process{holder}{waited}"
    )


def _open_lock(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CollectionError(
                f"{path} is a symbolic link, not a lock file; a collection's .lock must be a "
                "regular file (remove the link if you trust this collection)"
            ) from None
        raise CollectionError(
            f"cannot write to collection {path.parent}: {e.strerror or e}"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CollectionError(
            f"{path} is not a regular file; a collection's .lock must be one (remove it if "
            "you trust this collection)"
        )
    return fd


def holder_pid(fd: int) -> int | None:
    """The pid holding an flock on ``fd``'s file, from /proc/locks (Linux); None if unknown."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks waiters)
                if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
                    continue
                if parts[5] == key and parts[4].isdigit():
                    return int(parts[4])
    except OSError:
        pass
    return None


def writer_pid(path: Path) -> int | None:
    """The pid of the process holding the writer lock at ``path`` (0 when held by a process
    whose pid is unknown); None when nobody holds it. Opens the file read-only, without
    creating it or following a link, and never writes to it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def being_created(collection: Path) -> str | None:
    """The error for a reader that finds ``collection`` before its first commit while a
    writer holds its lock: the first ``vlmsearch index`` is still running. None otherwise."""
    pid = writer_pid(collection / LOCK_NAME)
    if pid is None:
        return None
    by = f" by pid {pid}" if pid else ""
    return (
        f"collection {collection} is being created{by} (its first `vlmsearch index` has not "
        "committed anything yet); try again when it has"
    )
