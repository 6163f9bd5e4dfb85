"""Health, the list of collections, collection info, and Prometheus metrics."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from vlmsearch.server.context import ServerContext, get_ctx, jsonable
from vlmsearch.server.registry import CollectionUnavailable, ServedCollection

router = APIRouter(tags=["info"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


def _summary(served: ServedCollection, ctx: ServerContext) -> dict[str, Any]:
    coll = served.current()
    m = coll.manifest
    return {
        "name": served.name,
        "images": len(coll),
        "generation": m.get("generation"),
        "model": (m.get("encoder") or {}).get("name"),
        "dim": m.get("dim"),
        "columns": served.facets(),
        "rerankers": list(ctx.config.rerankers),
        "captions": bool(ctx.config.lm),
        "max_k": ctx.config.max_k,
        "max_upload_bytes": ctx.config.max_upload_bytes,
    }


def _refresh(served_all: list[ServedCollection]) -> None:
    for served in served_all:
        with contextlib.suppress(CollectionUnavailable):  # reported with its reason
            served.current()


@router.get("/api/health", summary="Liveness, and each collection's generation")
async def health(ctx: Ctx) -> dict[str, Any]:
    # on the event loop, so that it answers while slow requests hold every worker thread;
    # only a new commit to load takes one
    served_all = list(ctx.registry.items.values())
    if any(s.needs_reload() or not s.available for s in served_all):
        await run_in_threadpool(_refresh, served_all)
    cols = {}
    for name, served in ctx.registry.items.items():
        coll = served.loaded
        if coll is None:
            cols[name] = {"available": False, "error": served.reload_error}
            continue
        images = len(coll)
        cols[name] = {
            "available": True,
            "generation": served.generation,
            "images": images,
            "reload_error": served.reload_error,
        }
    return {"status": "ok", "collections": cols}


@router.get("/api/collections", summary="The served collections")
def collections(ctx: Ctx) -> list[dict[str, Any]]:
    return jsonable(
        [
            _summary(s, ctx) if s.available else {"name": s.name, "error": s.reload_error}
            for s in ctx.registry.items.values()
        ]
    )


@router.get("/api/collections/{name}", summary="Everything about one collection")
def info(name: str, ctx: Ctx) -> dict[str, Any]:
    served = ctx.registry.get(name)
    data = served.current().info()
    for key in ("collection", "root"):  # server paths stay on the server
        data.pop(key, None)
    return jsonable({**_summary(served, ctx), "info": data})


@router.get("/metrics", summary="Prometheus metrics", tags=["info"])
def metrics(ctx: Ctx) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
