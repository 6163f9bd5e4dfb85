"""Images and thumbnails by id (the path always comes from the metadata, never the
client), and the web page itself from a fixed list of packaged files."""

from __future__ import annotations

import mimetypes
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from vlmsearch import names
from vlmsearch.collection import Collection
from vlmsearch.imaging import formats
from vlmsearch.imaging.decode import ImageDecodeError
from vlmsearch.imaging.thumbnails import FULL_VIEW, cached_thumbnail_of
from vlmsearch.server.context import ImageId, ServerContext, get_ctx, require_row
from vlmsearch.server.files import open_indexed
from vlmsearch.server.video_files import video_response

router = APIRouter(tags=["images"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]

# The page's files: only these names are ever read, so no request can name another file.
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
CACHE = "private, max-age=3600"


def _static(name: str) -> str:
    return resources.files("vlmsearch.server").joinpath("static", name).read_text("utf-8")


@router.get("/", include_in_schema=False)
def page(ctx: Ctx) -> HTMLResponse:
    html = _static("index.html").replace("{{title}}", ctx.config.title)
    return HTMLResponse(html, headers={"cache-control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, "not found")
    return Response(_static(name), media_type=STATIC[name], headers={"cache-control": "no-cache"})


@router.get("/api/collections/{name}/images/{image_id}", summary="The original image")
def image(name: str, image_id: ImageId, ctx: Ctx) -> Response:
    """The file as it is, or, for a format browsers cannot show (HEIC, camera RAW), a
    cached JPEG of it (longest side at most ``FULL_VIEW``)."""
    coll = ctx.registry.get(name).current()
    row = require_row(coll, image_id)
    if _needs_jpeg(row):
        data = thumbnail_of(ctx, coll, image_id, row, FULL_VIEW)
        return Response(data, media_type="image/jpeg", headers={"cache-control": CACHE})
    image = open_indexed(coll, image_id, row)
    media = mimetypes.guess_type(row["path"])[0] or _format_type(row)
    headers = {"cache-control": CACHE, "content-length": str(image.size)}
    return StreamingResponse(image.chunks(), media_type=media, headers=headers)


@router.get(
    "/api/collections/{name}/videos/{image_id}",
    summary="The video a frame comes from (index --video), with Range support",
)
def video(
    name: str, image_id: ImageId, ctx: Ctx, range: Annotated[str | None, Header()] = None
) -> Response:
    coll = ctx.registry.get(name).current()
    return video_response(coll, image_id, require_row(coll, image_id), range)


def _needs_jpeg(row: dict) -> bool:
    fmt = str(row.get("format") or "")
    return formats.needs_jpeg(row["path"]) or fmt in ("HEIF", "RAW")


def _format_type(row: dict) -> str:
    """The media type of an image whose path has no extension (a Parquet row), from the
    format its decoder saw."""
    fmt = str(row.get("format") or "").lower()
    known = ("jpeg", "png", "webp", "gif", "bmp", "tiff")
    return f"image/{fmt}" if fmt in known else "application/octet-stream"


@router.get("/api/collections/{name}/thumbs/{image_id}", summary="A cached JPEG thumbnail")
def thumbnail(name: str, image_id: ImageId, ctx: Ctx) -> Response:
    coll = ctx.registry.get(name).current()
    data = thumbnail_of(ctx, coll, image_id, require_row(coll, image_id))
    return Response(data, media_type="image/jpeg", headers={"cache-control": CACHE})


def thumbnail_of(
    ctx: ServerContext,
    coll: Collection,
    image_id: int,
    row: dict[str, Any],
    size: int | None = None,
) -> bytes:
    """The cached JPEG thumbnail of an indexed image (made now if missing), shared with the
    clip-retrieval API's inline images; HTTPException when the file cannot be served."""
    image = open_indexed(coll, image_id, row)
    try:
        data, made = cached_thumbnail_of(
            coll.path,
            image_id,
            size or ctx.config.thumb_size,
            image.stat,
            image.read,
            names.row_path(row),
        )
    except OSError:
        raise HTTPException(404, f"image {image_id} is no longer on disk") from None
    except ImageDecodeError as e:
        raise HTTPException(422, f"image {image_id} cannot be decoded: {e}") from None
    finally:
        image.close()
    if made:
        ctx.metrics.thumbnails.inc()
    return data
