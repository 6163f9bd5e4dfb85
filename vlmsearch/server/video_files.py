"""The video file a frame hit comes from, sent with HTTP Range support so that the
browser's ``<video>`` element can seek to the frame's time. The path comes from the
frame's metadata row, never from the client, and the file is opened inside the root
and checked unchanged (size and mtime, which a frame row carries from its video) the
same way :mod:`vlmsearch.server.files` checks images."""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse

from vlmsearch.collection import Collection
from vlmsearch.safe_open import iter_fd, open_inside

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CACHE = "private, max-age=3600"


def video_response(
    coll: Collection, image_id: int, row: dict[str, Any], rng: str | None
) -> Response:
    """The whole video (200) or the one byte range asked for (206); 416 when the range
    starts past the end. A malformed or multi-part Range is ignored (RFC 9110 allows it)."""
    video = row.get("video_path")
    if not isinstance(video, str) or not str(row.get("path", "")).startswith(video + "/"):
        raise HTTPException(404, f"image {image_id} is not a video frame")
    try:
        fd, st = open_inside(coll.root, video)
    except OSError:
        raise HTTPException(404, f"the video of image {image_id} is no longer on disk") from None
    if st.st_size != row.get("size") or st.st_mtime_ns != row.get("mtime_ns"):
        with contextlib.suppress(OSError):
            os.close(fd)
        raise HTTPException(
            409,
            f"the video of image {image_id} changed on disk since it was indexed: "
            "run `vlmsearch index` on its folder to update the collection",
        )
    size = st.st_size
    headers = {"accept-ranges": "bytes", "cache-control": CACHE}
    media = mimetypes.guess_type(video)[0] or "application/octet-stream"
    span = byte_range(rng, size)
    if span == "unsatisfiable":
        os.close(fd)
        return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
    if span is None:
        headers["content-length"] = str(size)
        return StreamingResponse(iter_fd(fd, size), media_type=media, headers=headers)
    start, end = span
    os.lseek(fd, start, os.SEEK_SET)
    headers["content-length"] = str(end - start + 1)
    headers["content-range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        iter_fd(fd, end - start + 1), status_code=206, media_type=media, headers=headers
    )


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of a single ``bytes=`` range (RFC 9110 section 14.1.2):
    ``a-b``, ``a-`` or the suffix ``-n``; "unsatisfiable" when it starts past the end;
    None when there is no usable range (serve the whole file)."""
    m = _RANGE.match((header or "").strip())
    if m is None or m.group(1) == m.group(2) == "":
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # the last n bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(size - n, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end
