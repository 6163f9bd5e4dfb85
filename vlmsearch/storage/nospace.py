"""A full disk (or quota) while writing becomes one line naming the file, not a traceback.

Each library reports it its own way: ``OSError`` with ``errno`` ENOSPC (Python, pyarrow
usually), numpy's short write ("8192 requested and 8128 written", an ``OSError`` without
errno), faiss's ``RuntimeError`` ("write error in ..."), torch's "file write failed".
Commits write new files and replace the manifest last, so a failed write leaves the last
commit as it was; :func:`commit_guard` says so.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator
from pathlib import Path

from vlmsearch.errors import VlmsearchError

_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile/save
_WRITE_FAILED = ("write error", "file write failed")  # faiss, torch (PytorchStreamWriter)


class NoSpaceError(VlmsearchError, OSError):
    """The device (or the user's quota) was full while writing ``path``. An OSError too, so
    code that tolerates failed writes (thumbnail caching) keeps doing so."""

    def __init__(self, path: str | Path, reason: str = "no space left on device") -> None:
        super().__init__(errno.ENOSPC, reason)
        self.path = str(path)
        self.reason = reason
        self.committed_intact = False

    def __str__(self) -> str:
        tail = "; the last commit is intact" if self.committed_intact else ""
        return f"{self.reason} while writing {self.path}{tail}"


def disk_full_reason(e: BaseException) -> str | None:
    """``e``'s reason if it reports a full device or quota, else None."""
    if isinstance(e, OSError) and e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "no space left on device"
    msg = str(e)
    if "Disk quota exceeded" in msg:
        return "disk quota exceeded"
    if "No space left on device" in msg:
        return "no space left on device"
    if isinstance(e, OSError) and e.errno is None and _SHORT_WRITE.search(msg):
        return "no space left on device"
    if isinstance(e, RuntimeError) and any(s in msg for s in _WRITE_FAILED):
        return "no space left on device"
    return None


def as_no_space(e: BaseException, path: str | Path) -> NoSpaceError | None:
    """``e`` as a :class:`NoSpaceError` about ``path`` when it is a disk-full error."""
    if isinstance(e, NoSpaceError):
        return e
    reason = disk_full_reason(e)
    return NoSpaceError(path, reason) if reason else None


@contextlib.contextmanager
def commit_guard(collection: Path) -> Iterator[None]:
    """Around a writer's work on a collection: a full disk anywhere in it is reported as
    one line that also says the last commit is intact."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        err = as_no_space(e, getattr(e, "filename", None) or collection)
        if err is None:
            raise
        err.committed_intact = True
        raise err from None
