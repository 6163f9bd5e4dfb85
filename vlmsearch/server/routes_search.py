"""Search by text and/or uploaded images, "more like this", classify and caption.

Every route calls the collection's public API; parameters travel with the request and
nothing is stored on shared state."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from vlmsearch import names
from vlmsearch.collection import Collection
from vlmsearch.errors import ModelError, QueryError
from vlmsearch.results import Hit
from vlmsearch.server.context import (
    ImageId,
    ServerContext,
    get_ctx,
    hit_json,
    jsonable,
    require_row,
)
from vlmsearch.server.limits import check_classify, check_search
from vlmsearch.server.schemas import ClassifyRequest, SearchRequest
from vlmsearch.server.security import check_where
from vlmsearch.server.text_columns import prepare_text_column
from vlmsearch.server.uploads import read_images

router = APIRouter(prefix="/api/collections/{name}", tags=["search"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


def _check_k(ctx: ServerContext, k: int) -> None:
    if k > ctx.config.max_k:
        raise HTTPException(422, f"k must be between 1 and {ctx.config.max_k} (got {k})")


def _run_search(
    ctx: ServerContext, name: str, req: SearchRequest, images: list[Any], negatives: list[Any]
) -> dict[str, Any]:
    coll, hits = search_hits(ctx, name, req, images, negatives)
    return {
        "collection": name,
        "generation": coll.manifest.get("generation"),
        "hits": [hit_json(name, h) for h in hits],
    }


def search_hits(
    ctx: ServerContext, name: str, req: SearchRequest, images: list[Any], negatives: list[Any]
) -> tuple[Collection, list[Hit]]:
    """The checked search every route shares (this API's and the clip-retrieval one's), with
    the collection object it ran on, so that callers read ids from that same commit."""
    _check_k(ctx, req.k)
    check_search(ctx.config, req, len(images) + len(negatives))
    where = check_where(req.where, ctx.config.max_where_chars)
    if req.rerank is not None and req.rerank not in ctx.config.rerankers:
        allowed = ", ".join(ctx.config.rerankers) or "none"
        raise QueryError(
            f"reranker {req.rerank!r} is not enabled on this server (enabled: {allowed})"
        )
    if req.rerank_top is not None and req.rerank_top > ctx.config.max_rerank_top:
        raise HTTPException(422, f"rerank_top must be at most {ctx.config.max_rerank_top}")
    weighted = _weighted(images, req.image_weights, "image_weights")
    negative_weighted = _weighted(negatives, req.negative_image_weights, "negative_image_weights")
    params = {}
    if req.nprobe:
        params["nprobe"] = req.nprobe
    if req.ef_search:
        params["efSearch"] = req.ef_search
    coll = ctx.registry.get(name).current()
    if req.text_column is not None:
        prepare_text_column(coll, req.text_column, ctx.config.max_text_embed)
    # a reranker runs its own models (and keeps a cache): one reranked search at a time
    lock = ctx.registry.rerank_lock if req.rerank else contextlib.nullcontext()
    with lock:
        hits = _search(coll, req, where, weighted, negative_weighted, params)
    return coll, hits


def _search(
    coll: Any,
    req: SearchRequest,
    where: str | None,
    weighted: list[Any],
    negative_weighted: list[Any],
    params: dict[str, Any],
) -> list[Any]:
    return coll.search(
        req.text or None,
        k=req.k,
        where=where,
        image=weighted or None,
        negative=req.negative or None,
        negative_image=negative_weighted or None,
        params=params,
        text_column=req.text_column,
        text_weight=req.text_weight,
        rerank=req.rerank,
        rerank_top=req.rerank_top,
        fusion=req.fusion,
        min_score=req.min_score,
        sort=req.sort,
        dedupe=req.dedupe,
        all_frames=req.all_frames,
    )


def _weighted(images: list[Any], weights: list[float] | None, field: str) -> list[Any]:
    if weights is None:
        return images
    if len(weights) != len(images):
        raise QueryError(f"{field} has {len(weights)} weights for {len(images)} images")
    return [(float(w), im) for w, im in zip(weights, images, strict=True)]


@router.post("/search", summary="Search by text (JSON body)")
def search(name: str, req: SearchRequest, ctx: Ctx) -> dict[str, Any]:
    return _run_search(ctx, name, req, [], [])


@router.post("/search/image", summary="Search by uploaded images, with optional text")
async def search_image(
    name: str,
    ctx: Ctx,
    image: Annotated[list[UploadFile] | None, File(description="Query images")] = None,
    negative_image: Annotated[list[UploadFile] | None, File()] = None,
    query: Annotated[str, Form(description="The SearchRequest fields as JSON")] = "{}",
) -> dict[str, Any]:
    try:
        req = SearchRequest.model_validate(json.loads(query or "{}"))
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"the query field is not valid JSON: {e}") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise HTTPException(400, "the query field is nested too deeply") from None
    except ValidationError as e:
        raise HTTPException(422, validation_summary(e)) from None
    ctx.registry.get(name)  # an unknown collection before reading any image
    check_search(ctx.config, req, len(image or []) + len(negative_image or []))
    images = await read_images(image or [], ctx.config.max_pixels)
    negatives = await read_images(negative_image or [], ctx.config.max_pixels)
    return await run_in_threadpool(_run_search, ctx, name, req, images, negatives)


def validation_summary(e: ValidationError) -> str:
    """A pydantic error as one line: ``field: message; ...``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


@router.get("/similar/{image_id}", summary='"More like this": images near an indexed one')
def similar(
    name: str,
    image_id: ImageId,
    ctx: Ctx,
    k: Annotated[int, Query(ge=1)] = 10,
    where: str | None = None,
) -> dict[str, Any]:
    _check_k(ctx, k)
    where = check_where(where, ctx.config.max_where_chars)
    coll = ctx.registry.get(name).current()
    require_row(coll, image_id)
    hits = coll.similar(image_id, k=k, where=where)
    return {
        "collection": name,
        "generation": coll.manifest.get("generation"),
        "like": image_id,
        "hits": [hit_json(name, h) for h in hits],
    }


@router.post("/classify", summary="Zero-shot classification of the stored images")
def classify(name: str, req: ClassifyRequest, ctx: Ctx) -> dict[str, Any]:
    _check_k(ctx, req.limit)
    check_classify(ctx.config, req)
    where = check_where(req.where, ctx.config.max_where_chars)
    coll = ctx.registry.get(name).current()
    preds = coll.classify(
        req.labels, templates=req.templates, top_k=req.top_k, where=where, rule=req.rule
    )
    counts: dict[str, int] = {}
    for p in preds:
        if p.label is not None:
            counts[p.label] = counts.get(p.label, 0) + 1
    out = []
    for p in preds[: req.limit]:
        d = p.to_dict()
        d.pop("path", None)
        d["relpath"] = names.readable(_relpath(coll, p.path))
        d["thumb_url"] = f"/api/collections/{name}/thumbs/{p.id}"
        out.append(d)
    return jsonable({"collection": name, "total": len(preds), "counts": counts, "predictions": out})


def _relpath(coll: Collection, path: str) -> str:
    root = str(coll.root).rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else path


@router.post("/caption/{image_id}", summary="Caption an indexed image (MAGIC)")
def caption(name: str, image_id: ImageId, ctx: Ctx) -> dict[str, Any]:
    coll = ctx.registry.get(name).current()
    require_row(coll, image_id)
    if not ctx.config.lm:
        raise ModelError("captions are off: start the server with --lm (a local causal LM)")
    with ctx.caption_lock:  # one caption at a time: the LM is not shared across threads
        key = f"{name}:{ctx.config.lm}"
        captioner = ctx.captioners.get(key)
        if captioner is None:
            from vlmsearch.caption.captioner import Captioner

            captioner = Captioner(coll.encoder, ctx.config.lm, device=ctx.config.device)
            ctx.captioners[key] = captioner
        (got,) = coll.caption(captioner, ids=np.asarray([image_id], np.int64))
    return {"collection": name, "id": got[0], "caption": got[1]}
