"""The Host check against DNS rebinding: without an API key, a page on another site whose
name was rebound to 127.0.0.1 could otherwise read a loopback server's images, since the
browser thinks it talks to that site. Browsers always send that site's name as ``Host``,
so answering only to known names defeats it."""

from __future__ import annotations

from vlmsearch.server.config import LOOPBACK
from vlmsearch.server.security import ASGIApp, Receive, Scope, Send, send_json

WILDCARD_BINDS = ("0.0.0.0", "::", "")


def host_name(value: str) -> str:
    """The name part of a Host header value, lowercase: ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, _, port = value.rpartition(":")
    name = name if name and port.isdigit() else value
    return name.rstrip(".")


def allowed_names(bound_host: str, extra: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Loopback names, the bound address (unless a wildcard) and the extra names."""
    names = set(LOOPBACK) | {host_name(h) for h in extra if h.strip()}
    bound = bound_host.strip("[]").lower()
    if bound not in WILDCARD_BINDS:
        names.add(bound)
    return frozenset(names)


class HostCheckMiddleware:
    """Answer 421 to a request whose ``Host`` names none of ``allowed`` (the port is not
    checked: it does not tell a rebound name from ours). No Host header (HTTP/1.0) passes;
    browsers always send one."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope.get("headers") or []).get(b"host")
            name = host_name(raw.decode("latin-1")) if raw is not None else None
            if name is not None and name not in self.allowed:
                shown = ", ".join(sorted(self.allowed))
                message = (
                    f"Host {name[:100]!r} is not served here (allowed: {shown}); start the "
                    "server with --allowed-host NAME to add a name, or set an API key"
                )
                await send_json(send, 421, {"error": message, "status": 421})
                return
        await self.app(scope, receive, send)
