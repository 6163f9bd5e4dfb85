"""Open an indexed image for a response: inside the collection's root, a regular file, and
unchanged since it was indexed (size and mtime), so that a file swapped for a link or
replaced after indexing is never served (see :mod:`vlmsearch.safe_open`)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from fastapi import HTTPException

from vlmsearch import names
from vlmsearch.collection import Collection
from vlmsearch.safe_open import UnsafeFile, open_inside


def open_indexed(
    coll: Collection, image_id: int, row: dict[str, Any]
) -> tuple[int, os.stat_result]:
    """(descriptor, fstat) of the image of ``row``; the caller closes it. HTTPException 404
    when it is gone or no longer a regular file inside the root, 409 when it changed."""
    try:
        fd, st = open_inside(coll.root, names.row_path(row))
    except UnsafeFile:
        raise HTTPException(
            404, f"image {image_id} is no longer a regular file inside the indexed folder"
        ) from None
    except OSError:
        raise HTTPException(404, f"image {image_id} is no longer on disk") from None
    if st.st_size != row.get("size") or st.st_mtime_ns != row.get("mtime_ns"):
        with contextlib.suppress(OSError):
            os.close(fd)
        raise HTTPException(
            409,
            f"image {image_id} changed on disk since it was indexed: "
            "run `vlmsearch index` on its folder to update the collection",
        )
    return fd, st
