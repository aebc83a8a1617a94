"""Who may use the server from a browser: an ASGI middleware in front of every route, and the names
this machine answers to.

- Origin: a request that carries an `Origin` header (browsers send one with every websocket, every
  POST and every script's fetch) is refused with 403 unless that origin is the server's own (the same
  host and port it was addressed to), a loopback one (a page on this machine), or one of
  --allowed-origins. A page elsewhere on the web can then neither open a user's websocket or stream
  nor run the model, as Jupyter refuses foreign origins. `<img>` tags and other plain GETs carry no
  Origin: viewer links still work anywhere.
- Host: a request must be addressed to a name this server answers to, so that a web page cannot
  reach it through a DNS name of its own that resolves to this machine (DNS rebinding). A server
  bound to loopback answers loopback names only (403, here); one bound wider answers
  --allowed-hosts, by default this machine's own names and addresses (400: `HostGuard`, Starlette's
  TrustedHostMiddleware saying what to do).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from urllib.parse import urlsplit

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
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


DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def same_origin(origin: tuple[str, int | None], origin_scheme: str, host: tuple[str, int | None], scheme: str) -> bool:
    """An origin (host, port, scheme) is the server's own as addressed (the Host header, the request's
    scheme): the same host name and the same port, a missing port being its scheme's default. Behind a
    reverse proxy that terminates TLS, uvicorn takes the scheme from its X-Forwarded-Proto."""
    return origin[0] == host[0] and (origin[1] or DEFAULT_PORTS.get(origin_scheme)) == (host[1] or DEFAULT_PORTS.get(scheme))


def machine_names() -> list[str]:
    """The names this machine answers to: localhost, its host name, its fully qualified name and its
    mDNS name (read locally; nothing is sent)."""
    hostname = socket.gethostname()
    names = {"localhost", hostname, socket.getfqdn(), f"{hostname.split('.')[0]}.local" if hostname else ""}
    return sorted(name for name in names if name)


def machine_addresses() -> list[str]:
    """The IP addresses of this machine's network interfaces (read locally; nothing is sent)."""
    import psutil

    addresses = {"127.0.0.1", "::1"}
    for interface in psutil.net_if_addrs().values():
        for address in interface:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(address.address.split("%")[0])  # drop an IPv6 zone
    return sorted(addresses)


def lan_addresses() -> list[str]:
    """IPv4 addresses other machines can use to reach this one."""
    return [a for a in machine_addresses() if ipaddress.ip_address(a).version == 4 and not ipaddress.ip_address(a).is_loopback]


def host_pattern(host: str) -> str:
    """A host name or address as Starlette's TrustedHostMiddleware compares it (IPv6 in brackets)."""
    host = host.lower().rstrip(".")
    try:
        return f"[{host}]" if ipaddress.ip_address(host.strip("[]")).version == 6 else host
    except ValueError:
        return host


def allowed_hosts(configured: list[str]) -> list[str]:
    """The hosts requests may be addressed to: `configured` (--allowed-hosts) plus loopback, or when
    none is configured, this machine's own names and addresses."""
    hosts = configured or [*machine_names(), *machine_addresses()]
    return sorted({host_pattern(host) for host in [*hosts, "localhost", "127.0.0.1", "::1"]})


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
        origin_scheme, separator, authority = origin.lower().partition("://")
        origin_host = host_and_port(authority) if separator and origin_scheme in ("http", "https") else None
        if origin_host is not None and (
            is_loopback_name(origin_host[0])
            or (host is not None and same_origin(origin_host, origin_scheme, host, scope.get("scheme", "http")))
        ):
            return None
        return "Requests from other web sites are refused (start the server with --allowed-origins to allow one)"


class HostGuard(TrustedHostMiddleware):
    """Starlette's check of the `Host` header (a name in `allowed_hosts`, `*.example.com` a domain,
    `*` any), with an answer that says what to do: 400, {"detail": ...}, and a line in the log."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), "")
        parsed = host_and_port(header)
        host = host_pattern(parsed[0]) if parsed else ""
        if host and any(host == p or (p.startswith("*") and host.endswith(p[1:])) for p in self.allowed_hosts):
            await self.app(scope, receive, send)
            return
        shown = host[:100] or header[:100]
        log.info("refused a %s request to %s addressed to %r: not an allowed host", scope["type"], scope.get("path", "")[:40], shown)
        detail = (f"This server does not answer to the name {shown!r} (the request's Host): start it with "
                  f"--allowed-hosts {shown} if that is its name")
        await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)


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
