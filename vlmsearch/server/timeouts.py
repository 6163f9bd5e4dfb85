"""Time limits on slow clients (slowloris): a request's header and its body must arrive
within a deadline, and the number of open connections is capped.

uvicorn's h11 protocol waits for a partial header for ever (its keep-alive timeout runs only
between requests), and the ASGI app is not called until the header is complete, so the
header deadline lives in the protocol (:func:`protocol_class`). The body deadline is ASGI
middleware (:class:`BodyTimeoutMiddleware`): one overall deadline for the whole body, so
that trickling one byte a second does not reset it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from vlmsearch.server.config import ServerConfig
from vlmsearch.server.security import ASGIApp, Receive, Scope, Send, send_json


def _timeout_response(message: str) -> bytes:
    body = json.dumps({"error": message, "status": 408}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request header: from the moment the
    connection opens, or the first byte of a later request, the header must be complete
    within :attr:`header_timeout` seconds, else the client gets 408 and is disconnected."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a complete header started a new request
            self._cancel_header_timer()
        elif self._waiting_for_header() and self._header_timer is None:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _waiting_for_header(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting_for_header():
            return
        message = f"request header not complete within {self.header_timeout:g} s"
        self.logger.info("%s; closing the connection", message)
        self.transport.write(_timeout_response(message))
        self.transport.close()


def protocol_class(header_timeout: float) -> type[H11Protocol]:
    """The h11 protocol with this header deadline (uvicorn takes a class, not options)."""
    return type(
        "HeaderTimeoutH11Protocol",
        (HeaderTimeoutH11Protocol,),
        {"header_timeout": float(header_timeout)},
    )


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """uvicorn settings that bound what slow or many clients can hold."""
    return {
        "http": protocol_class(config.header_timeout),
        "timeout_keep_alive": config.keep_alive_timeout,
        "limit_concurrency": config.max_connections,
    }


class BodyTimeout(HTTPException):
    """Raised from ``receive`` so that FastAPI's body parsing passes it on as it is."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s")


class BodyTimeoutMiddleware:
    """The whole request body must arrive within ``timeout`` seconds of the request's
    start; after that the client gets 408 with ``connection: close``."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body_done = False
        expired = False
        started = False

        async def timed_receive() -> dict[str, Any]:
            nonlocal body_done, expired
            if body_done:  # later calls wait for a disconnect: no deadline on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:  # noqa: UP041  (not the builtin before 3.11)
                expired = True
                raise BodyTimeout(self.timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def closing_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if expired:  # the rest of the body is never read: the connection must go
                    headers = [h for h in message.get("headers", []) if h[0] != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        except BodyTimeout as e:
            if not started:
                await send_json(
                    send, 408, {"error": e.detail, "status": 408}, [(b"connection", b"close")]
                )
