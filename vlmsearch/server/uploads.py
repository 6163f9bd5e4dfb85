"""Uploaded query images: bounded, decoded by the indexer's own decoder, clear 4xx errors."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from vlmsearch.imaging.decode import ImageDecodeError, decode_image


def decode_upload(data: bytes, filename: str | None, max_pixels: int) -> Any:
    """An RGB PIL image, or HTTPException: 413 for a decompression bomb, 415 for something
    that is not an image, 422 for a damaged one."""
    label = filename or "upload"
    try:
        return decode_image(data, max_pixels, name=filename)[0]
    except ImageDecodeError as e:
        msg = str(e)
        if "pixel limit" in msg or "decompression bomb" in msg:
            status = 413
        elif "not an image" in msg or "empty file" in msg:
            status = 415
        else:
            status = 422
        raise HTTPException(status, f"{label}: {msg}") from None


async def read_images(files: list[UploadFile], max_pixels: int) -> list[Any]:
    out = []
    for f in files:
        data = await f.read()
        out.append(await run_in_threadpool(decode_upload, data, f.filename, max_pixels))
    return out
