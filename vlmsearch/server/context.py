"""What every route shares: the settings, the served collections, metrics, and helpers
that turn results into JSON."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import HTTPException, Path, Request

from vlmsearch.collection import Collection
from vlmsearch.results import Hit
from vlmsearch.server.config import ServerConfig
from vlmsearch.server.metrics import Metrics
from vlmsearch.server.registry import Registry

# Ids are int64 in the metadata: a larger one in a URL is a 422, not an OverflowError (500).
ImageId = Annotated[int, Path(ge=0, le=2**63 - 1, description="An image id")]


@dataclass
class ServerContext:
    config: ServerConfig
    registry: Registry
    metrics: Metrics
    caption_lock: threading.Lock = field(default_factory=threading.Lock)
    captioners: dict[str, Any] = field(default_factory=dict)


def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


def _finite(v: Any) -> Any:
    """JSON has no NaN or infinity (a reranker's failed candidate); they become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def hit_json(name: str, hit: Hit) -> dict[str, Any]:
    """A hit for clients: no absolute server path, but URLs of its image and thumbnail."""
    d = hit.to_dict()
    d.pop("path", None)
    d["image_url"] = f"/api/collections/{name}/images/{hit.id}"
    d["thumb_url"] = f"/api/collections/{name}/thumbs/{hit.id}"
    if hit.extra.get("video_path") is not None:  # a frame: its video, seekable
        d["video_url"] = f"/api/collections/{name}/videos/{hit.id}"
    return _finite(d)


def jsonable(d: Any) -> Any:
    return _finite(d)


def require_row(coll: Collection, image_id: int) -> dict[str, Any]:
    """The metadata row of an indexed image; 404 unless it exists and was indexed."""
    row = coll.rows([image_id]).get(image_id)
    if row is None or row.get("status") != "ok":
        raise HTTPException(404, f"no indexed image with id {image_id}")
    rel = PurePosixPath(row["path"])
    if rel.is_absolute() or ".." in rel.parts:  # metadata written by hand: never leave root
        raise HTTPException(404, f"no indexed image with id {image_id}")
    return row
