"""Who may use the server from a browser: an ASGI middleware in front of every route.

- Origin: a request that carries an `Origin` header (browsers send one with every websocket, every
  POST and every script's fetch) is refused with 403 unless that origin is the server's own, a
  loopback one (a page on this machine), or one of --allowed-origins. A page elsewhere on the web can
  then neither open a user's websocket or stream nor run the model, as Jupyter refuses foreign
  origins. `<img>` tags and other plain GETs carry no Origin: viewer links still work anywhere.
- Host: a server bound to loopback answers only requests addressed to a loopback name or address,
  so a web page cannot reach it through a DNS name of its own that resolves to 127.0.0.1 (DNS
  rebinding).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

def is_loopback_name(host: str) -> bool:
    """localhost, *.localhost, 127.x.x.x or ::1 (brackets and no port)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_and_port(authority: str) -> tuple[str, int | None] | None:
    """('example.com', 8080) from 'example.com:8080' (a Host header), port None when not given;
    None when it is no host at all."""
    try:
        parts = urlsplit(f"//{authority}")
        return (parts.hostname or "", parts.port) if parts.hostname else None
    except ValueError:
        return None


def same_host(a: tuple[str, int | None], b: tuple[str, int | None]) -> bool:
    """The same host name, and the same port where both say one (a proxy in front may drop it)."""
    return a[0] == b[0] and (a[1] is None or b[1] is None or a[1] == b[1])


class OriginGuard:
    def __init__(self, app: ASGIApp, *, allowed_origins: list[str], loopback_only: bool) -> None:
        self.app = app
        self.allow_any = "*" in allowed_origins
        self.allowed = {origin.lower().rstrip("/") for origin in allowed_origins}
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = self.problem(scope)
            if problem is not None:
                log.info("refused a %s request to %s: %s", scope["type"], scope.get("path", "")[:40], problem)
                await _refuse(scope, send, problem)
                return
        await self.app(scope, receive, send)

    def problem(self, scope: Scope) -> str | None:
        """Why this request is refused, or None."""
        headers = {
            name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in (b"host", b"origin")
        }
        host = host_and_port(headers["host"]) if "host" in headers else None
        if self.loopback_only and "host" in headers and (host is None or not is_loopback_name(host[0])):
            return "This server listens on loopback only; address it as localhost or 127.0.0.1"
        origin = headers.get("origin")
        if origin is None or self.allow_any or origin.lower().rstrip("/") in self.allowed:
            return None
        scheme, separator, authority = origin.partition("://")
        origin_host = host_and_port(authority) if separator and scheme in ("http", "https") else None
        if origin_host is not None and (is_loopback_name(origin_host[0]) or (host is not None and same_host(origin_host, host))):
            return None
        return "Requests from other web sites are refused (start the server with --allowed-origins to allow one)"


async def _refuse(scope: Scope, send: Send, problem: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: the handshake gets a 403
        return
    body = json.dumps({"detail": problem}).encode()
    await send({
        "type": "http.response.start",
        "status": 403,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
