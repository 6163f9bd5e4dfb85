"""Thumbnails of indexed images, made once and cached inside the collection.

A thumbnail's file name carries the image id and the identity of the file it was made from
(size and mtime now, on disk), so a changed file gets a new thumbnail and the old one is
removed. Files are written atomically (temp file + rename): concurrent requests for the
same thumbnail may both make it, but a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

from vlmsearch.imaging.decode import DEFAULT_MAX_PIXELS, decode_image
from vlmsearch.safe_open import is_inside, open_inside, read_fd
from vlmsearch.storage.atomic import atomic_write

THUMB_DIR = "thumbs"
QUALITY = 82  # JPEG quality: small files, artefacts invisible at thumbnail size
MAX_THUMB_BYTES = 16 * 2**20  # a cached thumbnail is a few kB; never read more than this


FULL_VIEW = 4096
"""The longest side of the JPEG the server sends as the full-size view of a format
browsers cannot show (HEIC, camera RAW): made and cached like a thumbnail."""


def make_thumbnail(
    data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> bytes:
    """JPEG bytes of the image scaled so that its longest side is at most ``size``
    (``name`` routes formats such as camera RAW, see :func:`decode_image`)."""
    img, _ = decode_image(data, max_pixels, name=name)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def thumbnail_path(collection: Path, image_id: int, image: Path, size: int) -> Path:
    """Where the thumbnail of ``image`` (as it is on disk now) is cached."""
    st = image.stat()
    return collection / _relative(image_id, size, st.st_size, st.st_mtime_ns)


def _relative(image_id: int, size: int, file_size: int, mtime_ns: int) -> str:
    bucket = f"{image_id // 1000:06d}"  # at most 1000 ids per folder
    return f"{THUMB_DIR}/{bucket}/thumb-{image_id}-{size}-{file_size}-{mtime_ns}.jpg"


def cached_thumbnail(collection: Path, image_id: int, image: Path, size: int) -> tuple[bytes, bool]:
    """(JPEG bytes, whether it was made now) of the file ``image`` as it is now; see
    :func:`cached_thumbnail_of`."""
    st = image.stat()
    return cached_thumbnail_of(collection, image_id, size, st, image.read_bytes, str(image))


def cached_thumbnail_of(
    collection: Path,
    image_id: int,
    size: int,
    source: os.stat_result,
    read: Callable[[], bytes],
    name: str | None = None,
) -> tuple[bytes, bool]:
    """(JPEG bytes, whether it was made now): made from ``read()`` (the image whose stat is
    ``source``) and stored on first use. Raises OSError when the image cannot be read and
    ImageDecodeError when it cannot be decoded. A collection that cannot be written still
    gets its thumbnail, just not cached.

    The collection directory is not trusted either: a cached file is read only if it is a
    regular file inside it (no link), and nothing is written through a link out of it."""
    rel = _relative(image_id, size, source.st_size, source.st_mtime_ns)
    with contextlib.suppress(OSError):
        fd, st = open_inside(collection, rel)
        try:
            return read_fd(fd, min(st.st_size, MAX_THUMB_BYTES)), False
        finally:
            os.close(fd)
    data = make_thumbnail(read(), size, name=name)
    path = collection / rel
    try:
        links = (path.parent.parent, path.parent)  # thumbs/ and its bucket
        if any(p.is_symlink() for p in links):
            return data, True  # a link planted in the cache: write nothing through it
        path.parent.mkdir(parents=True, exist_ok=True)
        if not is_inside(path.parent, os.path.realpath(collection)):
            return data, True
        atomic_write(path, lambda p: p.write_bytes(data))
        for old in path.parent.glob(f"thumb-{image_id}-{size}-*.jpg"):
            if old != path:  # made from an older version of the file
                with contextlib.suppress(OSError):
                    old.unlink()
    except OSError:
        pass
    return data, True
