"""uvicorn's HTTP and websocket transports, with what this server changes in them:

- A client gets at most `--header-timeout` seconds to send a request's headers, from the moment it
  connects or starts a request on a kept-alive connection: a client that sends them a byte at a time
  (slowloris), or nothing at all, would otherwise hold its connection for ever (uvicorn times out
  idle kept-alive connections only).
- At most `--max-connections-per-address` connections open from one client address (websockets
  included); more are closed as they are made. Behind a reverse proxy every client has the proxy's
  address: set it to 0 there and let the proxy limit.
- A websocket text message that is not valid UTF-8 reaches the conversation (as text with the bad
  bytes escaped, which `protocol.parse_json` refuses with an error message) instead of closing the
  connection with a traceback in the log. A client's broken message costs that message, as every
  other bad message does, not its session.

Each refusal is one log line (at most one of a kind every `LOG_EVERY_S` per address, so a flood
cannot flood the log). These subclass uvicorn's own classes, whose internals change between releases: the bound
on uvicorn in pyproject.toml says which releases this was checked against, and where this uvicorn
lacks what is changed, uvicorn's own classes are used and the start-up log says what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class ConnectionLimits:
    """What the transports of one server share: the open connections by client address."""

    def __init__(self, header_timeout: float, max_per_address: int) -> None:
        self.header_timeout = header_timeout
        self.max_per_address = max_per_address
        self._open: defaultdict[str, set[asyncio.BaseTransport]] = defaultdict(set)
        self._logged_at: dict[tuple[str, str], float] = {}

    def opened(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection; False when its address has too many open already (close it)."""
        address = _address(transport)
        connections = self._open[address]
        if self.max_per_address and len(connections) >= self.max_per_address:
            self.say(address, "limit", f"refused a connection from {address}: {len(connections)} connections are open from "
                              f"that address (--max-connections-per-address {self.max_per_address})")
            if not connections:
                del self._open[address]
            return False
        connections.add(transport)
        return True

    def closed(self, transport: asyncio.BaseTransport) -> None:
        address = _address(transport)
        connections = self._open.get(address)
        if connections is not None:
            connections.discard(transport)
            if not connections:
                del self._open[address]

    def open_from(self, address: str) -> int:
        return len(self._open.get(address, ()))

    def say(self, address: str, kind: str, message: str) -> None:
        """Log `message`, unless a message of this kind about this address was logged within LOG_EVERY_S."""
        now = time.monotonic()
        key = (address, kind)
        if now - self._logged_at.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[key] = now
            if len(self._logged_at) > 10_000:  # bounded: forget the oldest
                for stale in sorted(self._logged_at, key=self._logged_at.__getitem__)[:5_000]:
                    del self._logged_at[stale]
            log.warning("%s", message)


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unknown"


def protocol_classes(limits: ConnectionLimits) -> tuple[Any, Any]:
    """(http, ws) for uvicorn.Config: this server's transports, or uvicorn's own ("auto") where this
    uvicorn lacks what they change."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError as error:
        log.warning("uvicorn's transports could not be adapted (%s): no header timeout, no per-address limit", error)
        return "auto", "auto"
    needed = (
        (HttpToolsProtocol, ("on_message_begin", "on_headers_complete", "connection_lost")),
        (WebSocketsSansIOProtocol, ("send_receive_event_to_app", "connection_lost")),
    )
    missing = [f"{cls.__name__}.{name}" for cls, names in needed for name in names if not callable(getattr(cls, name, None))]
    if missing:
        log.warning("uvicorn's transports could not be adapted (no %s): no header timeout, no per-address limit",
                    ", ".join(missing))
        return "auto", "auto"

    class LimitedHttpProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not limits.opened(transport):
                transport.abort()
                return
            self._start_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_deadline()
            limits.closed(self.transport)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:  # the first byte of a request (kept alive: of the next one)
            super().on_message_begin()
            if self._header_deadline is None:
                self._start_header_deadline()

        def on_headers_complete(self) -> None:
            self._stop_header_deadline()
            super().on_headers_complete()

        def _start_header_deadline(self) -> None:
            self._stop_header_deadline()
            if limits.header_timeout:
                self._header_deadline = self.loop.call_later(limits.header_timeout, self._headers_too_slow)

        def _stop_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            address = _address(self.transport)
            limits.say(address, "headers", f"closed a connection from {address}: it did not send its request headers within "
                                f"{limits.header_timeout:g} s (--header-timeout)")
            self.transport.abort()

    class LenientTextProtocol(WebSocketsSansIOProtocol):
        def connection_lost(self, exc: Exception | None) -> None:
            limits.closed(self.transport)
            super().connection_lost(exc)

        def send_receive_event_to_app(self) -> None:
            if self.curr_msg_data_type == "text" and not self.close_sent:
                data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
                try:
                    data.decode()
                except UnicodeDecodeError:
                    self.frames = []
                    self.queue.put_nowait({"type": "websocket.receive", "text": data.decode(errors="surrogateescape")})
                    if not self.read_paused:
                        self.read_paused = True
                        self.transport.pause_reading()
                    return
            super().send_receive_event_to_app()

    return LimitedHttpProtocol, LenientTextProtocol
