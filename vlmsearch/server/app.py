"""The app factory: collections load once here; errors become one JSON shape,
``{"error": message, "status": code}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vlmsearch._version import __version__
from vlmsearch.errors import BusyError, CollectionError, ModelError, QueryError, VlmsearchError
from vlmsearch.server import routes_clip_retrieval, routes_media, routes_meta, routes_search
from vlmsearch.server.config import ServerConfig
from vlmsearch.server.context import ServerContext
from vlmsearch.server.hosts import HostCheckMiddleware, allowed_names
from vlmsearch.server.metrics import Metrics, MetricsMiddleware
from vlmsearch.server.registry import CollectionUnavailable, Registry, UnknownCollection
from vlmsearch.server.security import ApiKeyMiddleware, BodyLimitMiddleware
from vlmsearch.server.timeouts import BodyTimeoutMiddleware
from vlmsearch.storage.filter_budget import FilterBudget

log = logging.getLogger("vlmsearch.server")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


def _status(e: VlmsearchError) -> int:
    if isinstance(e, UnknownCollection):
        return 404
    if isinstance(e, QueryError):
        return 400
    if isinstance(e, ModelError | CollectionUnavailable):
        return 503  # a model the server cannot load now (e.g. no LM configured)
    if isinstance(e, BusyError):
        return 503  # e.g. every filter slot of a collection taken: try again later
    if isinstance(e, CollectionError):
        return 409  # empty, or being rewritten
    return 400


def _validation_message(e: RequestValidationError) -> tuple[int, str]:
    parts = []
    for err in e.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return 400, f"malformed JSON body: {ctx.get('error', err.get('msg'))}"
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return 422, "; ".join(parts) or "invalid request"


def create_app(config: ServerConfig) -> FastAPI:
    """Load every collection (and its model) now, then build the app."""
    registry = Registry(
        config.collections,
        device=config.device,
        filter_budget=FilterBudget(timeout_s=config.filter_timeout_s),
    )
    metrics = Metrics(registry)
    app = FastAPI(
        title="vlmsearch",
        version=__version__,
        description="Search local image collections by text, by image, or both.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ServerContext(config, registry, metrics)
    for module in (routes_meta, routes_search, routes_media, routes_clip_retrieval):
        app.include_router(module.router)

    @app.exception_handler(VlmsearchError)
    async def _vlmsearch_error(request: Request, e: VlmsearchError) -> JSONResponse:
        return _error(_status(e), str(e))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(e)
        return _error(status, message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error: {type(e).__name__}")

    # Each middleware wraps the ones added before it: the key (or, without one, the Host)
    # is checked first, then the body's deadline and size limit, then the request is timed.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, limit=config.max_upload_bytes)
    app.add_middleware(BodyTimeoutMiddleware, timeout=config.body_timeout)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, key=config.api_key)
    elif "*" not in config.allowed_hosts:
        allowed = allowed_names(config.host, config.allowed_hosts)
        app.add_middleware(HostCheckMiddleware, allowed=allowed)
    if config.cors_origins:  # outermost: a browser's preflight carries no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "authorization", "x-api-key"],
        )
    return app
