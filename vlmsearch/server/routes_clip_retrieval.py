"""clip-retrieval's back-end API (``clip_back``), so that its ``ClipClient`` and front end
can query a vlmsearch server: ``/indices-list``, ``/knn-service`` and ``/metadata``.

An index is a served collection and an id is vlmsearch's stable image id, so the ids that
``/knn-service`` returns are the ones ``/metadata`` (and the native API) take. Searches go
through the same checked paths as ``/api/collections/{name}/search``; what clip_back does
with models vlmsearch does not have is spelled out in docs/server.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlmsearch import names
from vlmsearch.collection import Collection
from vlmsearch.errors import QueryError
from vlmsearch.results import Hit
from vlmsearch.search.duplicates import DEFAULT_THRESHOLD, dedupe_hits
from vlmsearch.server.context import ServerContext, get_ctx, jsonable, require_row
from vlmsearch.server.routes_media import thumbnail_of
from vlmsearch.server.routes_search import search_hits, validation_summary
from vlmsearch.server.schemas import SearchRequest
from vlmsearch.server.text_columns import prepare_text_column
from vlmsearch.server.uploads import decode_upload
from vlmsearch.storage.metadata import BASE_COLUMNS

router = APIRouter(tags=["clip-retrieval"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]

# clip_back's threshold: results whose embeddings are closer than this are one image
DEDUP_SIMILARITY = DEFAULT_THRESHOLD
# modality "text" searches caption embeddings, as clip_back's text index holds them
CAPTION_COLUMN = "caption"
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)
_Id = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KnnRequest(_Strict):
    """The body ``ClipClient`` sends; the three required fields are the ones clip_back
    reads without a default."""

    modality: Literal["image", "text"] = Field(
        ..., description="image: search the image vectors; text: the caption embeddings."
    )
    num_images: int = Field(..., ge=1, description="Results returned with their metadata.")
    indice_name: str = Field(..., description="A collection name, from /indices-list.")
    num_result_ids: int | None = Field(
        None, ge=1, description="Ids returned, before deduplication (capped at max_k)."
    )
    text: str | None = None
    image: str | None = Field(None, description="A base64-encoded image file.")
    image_url: str | None = Field(None, description="Only data:image/...;base64 URLs.")
    embedding_input: list[float] | None = Field(None, description="A query embedding.")
    deduplicate: bool = False
    use_mclip: bool = False
    # accepted for clip_back's clients; vlmsearch has none of these models (see the docs)
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: int | str | None = None
    aesthetic_weight: float | str | None = None


class MetadataRequest(_Strict):
    indice_name: str
    ids: list[_Id] = Field(..., description="Ids from /knn-service.")


_Model = TypeVar("_Model", bound=BaseModel)


async def _body(request: Request, model: type[_Model]) -> _Model:
    """The JSON body whatever its content type, as clip_back's ``get_json(force=True)``:
    ClipClient sends none, and the front end's fetch() sends text/plain."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"malformed JSON body: {e}") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise HTTPException(400, "the JSON body is nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise HTTPException(422, validation_summary(e)) from None


async def _knn_body(request: Request) -> KnnRequest:
    return await _body(request, KnnRequest)


async def _metadata_body(request: Request) -> MetadataRequest:
    return await _body(request, MetadataRequest)


def _documented(model: type[BaseModel]) -> dict[str, Any]:
    """The body's schema for /docs, since it is not read by FastAPI's JSON parameter."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.get("/indices-list", summary="clip-retrieval: the index (collection) names")
def indices_list(ctx: Ctx) -> list[str]:
    return list(ctx.registry.items)


@router.post(
    "/knn-service",
    summary="clip-retrieval: nearest images to a text or image",
    openapi_extra=_documented(KnnRequest),
)
def knn_service(req: Annotated[KnnRequest, Depends(_knn_body)], ctx: Ctx) -> list[dict[str, Any]]:
    if req.num_images > ctx.config.max_k:
        raise HTTPException(
            422, f"num_images must be between 1 and {ctx.config.max_k} (got {req.num_images})"
        )
    name = req.indice_name
    coll = ctx.registry.get(name).current()  # an unknown index before decoding anything
    kind, value = _one_query(req)
    if req.use_mclip and kind == "text":  # clip_back uses mclip for text queries only
        raise QueryError("use_mclip is not supported: vlmsearch has no multilingual CLIP")
    column = _text_column(coll, name) if req.modality == "text" else None
    # ids beyond num_images too (clip_back's num_result_ids), e.g. for deduplication
    k = min(max(req.num_images, req.num_result_ids or 0), ctx.config.max_k)
    if kind == "embedding":
        coll, hits = _vector_search(ctx, coll, value, column, k)
    else:
        # "1:" keeps a text such as "3:10 to Yuma" literal (no weight prefix)
        search = SearchRequest(
            text=f"1:{value}" if kind == "text" else None,
            k=k,
            text_column=column,
            text_weight=1.0,
        )
        images = [] if kind == "text" else [decode_upload(value, kind, ctx.config.max_pixels)]
        coll, hits = search_hits(ctx, name, search, images, [])
    if req.deduplicate:
        # clip_back's rule over every candidate: cosine >= 0.94, groups joined transitively
        hits = dedupe_hits(hits, coll.vectors.get, DEDUP_SIMILARITY)
    # as clip_back: every candidate left, the first num_images with their metadata (the
    # front end asks /metadata for the others as the user scrolls)
    rows = coll.rows([h.id for h in hits[: req.num_images]])
    out = []
    for rank, h in enumerate(hits):
        item = _metadata(ctx, coll, h.id, rows.get(h.id)) if rank < req.num_images else {}
        item.update(id=h.id, similarity=h.score)
        out.append(item)
    return jsonable(out)


@router.post(
    "/metadata",
    summary="clip-retrieval: the metadata of ids from /knn-service",
    openapi_extra=_documented(MetadataRequest),
)
def metadata(
    req: Annotated[MetadataRequest, Depends(_metadata_body)], ctx: Ctx
) -> list[dict[str, Any]]:
    if len(req.ids) > ctx.config.max_k:
        raise HTTPException(422, f"at most {ctx.config.max_k} ids at a time (got {len(req.ids)})")
    coll = ctx.registry.get(req.indice_name).current()
    rows = coll.rows(req.ids)
    return jsonable([{"id": i, "metadata": _metadata(ctx, coll, i, rows.get(i))} for i in req.ids])


def _one_query(req: KnnRequest) -> tuple[str, Any]:
    """(kind, value) of the one query the request gives; clip_back silently takes the
    first, which hides a client's mistake, so two are refused here."""
    given = {
        "text": req.text if req.text else None,  # clip_back treats "" as no text
        "image": req.image,
        "image_url": req.image_url,
        "embedding_input": req.embedding_input,
    }
    present = [k for k, v in given.items() if v is not None]
    if len(present) != 1:
        got = ", ".join(present) if present else "none"
        raise QueryError(f"give exactly one of text, image, image_url, embedding_input (got {got})")
    kind = present[0]
    if kind == "text":
        return "text", req.text
    if kind == "embedding_input":
        return "embedding", _embedding(req.embedding_input or [])
    if kind == "image":
        return "image", _b64(req.image or "", "image")
    return "image_url", _data_url(req.image_url or "")


def _b64(text: str, field: str) -> bytes:
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise QueryError(f"{field} is not valid base64") from None
    if not data:
        raise QueryError(f"{field} is empty")
    return data


def _data_url(url: str) -> bytes:
    """A ``data:image/...;base64,`` URL; the server fetches nothing (a client could make it
    reach hosts or files that only the server can see)."""
    m = _DATA_URL.fullmatch(url.strip())
    if m is None:
        raise QueryError(
            "image_url: this server does not fetch URLs; send the image itself as base64 in "
            "`image`, or as a data:image/...;base64, URL"
        )
    return _b64(m.group(1), "image_url")


def _embedding(values: list[float]) -> np.ndarray:
    v = np.asarray(values, np.float32)
    norm = float(np.linalg.norm(v)) if v.size else 0.0
    if not np.isfinite(v).all() or not np.isfinite(norm) or norm == 0.0:
        raise QueryError("embedding_input must be a non-zero vector of finite numbers")
    return v / norm


def _text_column(coll: Collection, name: str) -> str:
    if CAPTION_COLUMN not in coll.reader.column_names:
        raise QueryError(
            f"modality 'text' searches caption embeddings, and collection {name!r} has no "
            f"{CAPTION_COLUMN!r} column; use modality 'image'"
        )
    return CAPTION_COLUMN


def _vector_search(
    ctx: ServerContext, coll: Collection, vector: np.ndarray, column: str | None, k: int
) -> tuple[Collection, list[Hit]]:
    if column is None:
        return coll, coll.search_vector(vector, k=k)
    prepare_text_column(coll, column, ctx.config.max_text_embed)
    return coll, coll.search_fused(vector, column, 1.0, k=k)


def _metadata(
    ctx: ServerContext, coll: Collection, image_id: int, row: dict[str, Any] | None
) -> dict[str, Any]:
    """What clip_back returns for a result: ``image_path`` (relative to the collection's
    root: server paths stay on the server), the metadata columns (``caption``, ``url``, ...)
    and ``image``, a base64 JPEG thumbnail. An id without an indexed image gets ``{}``."""
    if row is None or row.get("status") != "ok":
        return {}
    meta: dict[str, Any] = {c: v for c, v in row.items() if c not in BASE_COLUMNS}
    meta["image_path"] = names.readable(names.row_path(row))
    try:
        require_row(coll, image_id)
        meta["image"] = base64.b64encode(thumbnail_of(ctx, coll, image_id, row)).decode()
    except HTTPException:
        pass  # clip_back too leaves ``image`` out when the file is not there
    return names.readable_data(meta)
