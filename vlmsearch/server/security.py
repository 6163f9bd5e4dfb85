"""Guards in front of every route: the API key, the request-size limit, filter checks.

Both middlewares are plain ASGI so that they run before FastAPI parses anything: a request
without the key, or with a body over the limit, is answered before its body is read.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

from vlmsearch.errors import QueryError
from vlmsearch.storage.where_check import validate_where

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict[str, Any], headers=()) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key from ``X-API-Key``, ``Authorization: Bearer KEY`` or HTTP Basic (the key is
    the password; browsers prompt for it, then send it with every image request too)."""
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1")
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


class ApiKeyMiddleware:
    """Every HTTP request needs the key (compared in constant time)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            got = presented_key(dict(scope.get("headers") or []))
            if got is None or not hmac.compare_digest(got.encode(), self.key):
                await send_json(
                    send,
                    401,
                    {"error": "missing or wrong API key", "status": 401},
                    [(b"www-authenticate", b'Basic realm="vlmsearch", charset="UTF-8"')],
                )
                return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` so that FastAPI's body parsing passes it on as it is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413: at once when Content-Length
    says so, else as soon as the streamed body passes the limit (never read whole)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        error = {"error": f"request body over the {self.limit}-byte limit", "status": 413}
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                await send_json(send, 400, {"error": "bad Content-Length", "status": 400})
                return
            if too_big:
                await send_json(send, 413, error, [(b"connection", b"close")])
                return
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_json(send, 413, error, [(b"connection", b"close")])


def check_where(where: str | None, max_chars: int) -> str | None:
    """The server's length limit, then the same validation as ``--where`` (see
    :mod:`vlmsearch.storage.where_check`): checked before any model runs."""
    if where is None or not where.strip():
        return None
    if len(where) > max_chars:
        raise QueryError(f"the where filter is over {max_chars} characters")
    if "\x00" in where:
        raise QueryError("the where filter contains a NUL character")
    validate_where(where)
    return where
