"""Open an indexed image for a response: inside the collection's root, a regular file, and
unchanged since it was indexed (size and mtime), so that a file swapped for a link or
replaced after indexing is never served (see :mod:`vlmsearch.safe_open`). An item inside
a dataset container (``shard.tar/key.jpg``) is served from the container, checked the
same way."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from vlmsearch import names
from vlmsearch.collection import Collection
from vlmsearch.imaging import sources
from vlmsearch.imaging.file_read import MAX_FILE_BYTES
from vlmsearch.safe_open import UnsafeFile, iter_fd, open_inside, read_fd


@dataclass
class Indexed:
    """An indexed image ready to send: its size, its identity for caches (``stat``:
    size and mtime of the file, or of the member and its container) and its bytes."""

    size: int
    stat: Any
    _fd: int | None = None
    _data: bytes | None = None

    def chunks(self) -> Iterator[bytes]:
        """The bytes in chunks (the descriptor is closed at the end)."""
        if self._fd is not None:
            return iter_fd(self._fd, self.size)
        return iter([self._data or b""])

    def read(self) -> bytes:
        if self._fd is not None:
            return read_fd(self._fd, self.size)
        return self._data or b""

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


@dataclass(frozen=True)
class _Identity:
    st_size: int
    st_mtime_ns: int


def open_indexed(coll: Collection, image_id: int, row: dict[str, Any]) -> Indexed:
    """The image of ``row``; the caller sends :meth:`Indexed.chunks` or closes it.
    HTTPException 404 when it is gone or no longer a regular file inside the root, 409
    when it changed."""
    rel = names.row_path(row)
    try:
        fd, st = open_inside(coll.root, rel)
    except UnsafeFile:
        member = _open_member(coll, image_id, row, rel)
        if member is not None:
            return member
        raise HTTPException(
            404, f"image {image_id} is no longer a regular file inside the indexed folder"
        ) from None
    except OSError:
        raise HTTPException(404, f"image {image_id} is no longer on disk") from None
    if st.st_size != row.get("size") or st.st_mtime_ns != row.get("mtime_ns"):
        with contextlib.suppress(OSError):
            os.close(fd)
        raise _changed(image_id)
    return Indexed(st.st_size, st, _fd=fd)


def _changed(image_id: int) -> HTTPException:
    return HTTPException(
        409,
        f"image {image_id} changed on disk since it was indexed: "
        "run `vlmsearch index` on its folder to update the collection",
    )


def _open_member(coll: Collection, image_id: int, row: dict[str, Any], rel: str) -> Indexed | None:
    """A member of a dataset container inside the root, as indexed; None if ``rel`` does
    not name one."""
    found = sources.split_member(os.path.join(os.path.realpath(coll.root), rel))
    if found is None:
        return None
    container, member, src = found
    try:  # the container itself: inside the root, a regular file, no link on the way
        fd, st = open_inside(coll.root, os.path.relpath(container, os.path.realpath(coll.root)))
        os.close(fd)
    except OSError:
        return None
    if st.st_mtime_ns != row.get("mtime_ns"):
        raise _changed(image_id)
    try:
        data = src.read(container, member, MAX_FILE_BYTES)
    except OSError:
        raise HTTPException(
            404, f"image {image_id} is no longer in {os.path.basename(container)}"
        ) from None
    # a video frame's row carries its video's size (sources/video.py), others the member's
    if (st.st_size if getattr(src, "sized_by_container", False) else len(data)) != row.get("size"):
        raise _changed(image_id)
    return Indexed(len(data), _Identity(len(data), st.st_mtime_ns), _data=data)
