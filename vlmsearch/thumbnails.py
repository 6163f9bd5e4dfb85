"""Thumbnails of indexed images, made once and cached inside the collection.

A thumbnail's file name carries the image id and the identity of the file it was made from
(size and mtime now, on disk), so a changed file gets a new thumbnail and the old one is
removed. Files are written atomically (temp file + rename): concurrent requests for the
same thumbnail may both make it, but a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from vlmsearch.indexes.atomic import atomic_write
from vlmsearch.indexes.decode import DEFAULT_MAX_PIXELS, decode_image

THUMB_DIR = "thumbs"
QUALITY = 82  # JPEG quality: small files, artefacts invisible at thumbnail size


def make_thumbnail(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """JPEG bytes of the image scaled so that its longest side is at most ``size``."""
    img, _ = decode_image(data, max_pixels)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def thumbnail_path(collection: Path, image_id: int, image: Path, size: int) -> Path:
    """Where the thumbnail of ``image`` (as it is on disk now) is cached."""
    st = image.stat()
    bucket = f"{image_id // 1000:06d}"  # at most 1000 ids per folder
    name = f"thumb-{image_id}-{size}-{st.st_size}-{st.st_mtime_ns}.jpg"
    return collection / THUMB_DIR / bucket / name


def cached_thumbnail(collection: Path, image_id: int, image: Path, size: int) -> tuple[bytes, bool]:
    """(JPEG bytes, whether it was made now): made and stored on first use. Raises
    OSError when the image cannot be read and ImageDecodeError when it cannot be decoded.
    A collection that cannot be written still gets its thumbnail, just not cached."""
    path = thumbnail_path(collection, image_id, image, size)
    with contextlib.suppress(OSError):
        return path.read_bytes(), False
    data = make_thumbnail(image.read_bytes(), size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_bytes(data))
        for old in path.parent.glob(f"thumb-{image_id}-{size}-*.jpg"):
            if old != path:  # made from an older version of the file
                with contextlib.suppress(OSError):
                    old.unlink()
    except OSError:
        pass
    return data, True
