"""One ASGI connection carried across the hop between the gateway and a replica, over Ray deployment
handles: the replica's `connect(connection, scope)` is a streaming call that yields the app's send
events; the gateway pushes the client's receive events with `push(connection, events)` and says how
many send events it has passed on with `ack(connection, count)`.

Flow control: the gateway reads a client's events as the replica takes them in (an inbox of
`INBOX_SIZE` events), and a replica sends at most `WINDOW` events ahead of what the gateway has passed
on to the client, so a slow client or viewer never piles frames up in between.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

INBOX_SIZE = 8  # client events a replica holds for its app before the gateway waits
WINDOW = 32  # events a replica sends ahead of what the gateway has passed on
ACK_EVERY = 16  # the gateway tells the replica what it has passed on, every so many events
# Ray does not keep a streaming call and the calls after it in order: a connection's first `push` may
# reach the replica before its `connect` has started. It waits this long for the connection to appear.
ARRIVAL_WAIT_S = 10.0
PORTABLE_SCOPE_KEYS = (
    "type", "asgi", "http_version", "scheme", "method", "path", "raw_path", "query_string", "root_path",
    "headers", "client", "server", "subprotocols",
)
DISCONNECTS = ("websocket.disconnect", "http.disconnect")


# --- the replica's end ---------------------------------------------------------------------------------


@dataclass
class ReplicaEnd:
    """A connection's queues on the replica: the client's events in, the app's events out."""

    inbox: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(INBOX_SIZE))
    outbox: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(WINDOW))
    acked: int = 0
    _acked_event: asyncio.Event = field(default_factory=asyncio.Event)

    def acknowledge(self, passed_on: int) -> None:
        self.acked = max(self.acked, passed_on)
        self._acked_event.set()

    async def wait_for_ack(self) -> None:
        self._acked_event.clear()
        await self._acked_event.wait()


# --- the gateway's end -----------------------------------------------------------------------------------


class ReplicaFailed(Exception):
    """The replica died or could not be reached while serving a connection; `started` says whether the
    client had its answer begun (a websocket accepted, a response's headers sent)."""

    def __init__(self, cause: BaseException, started: bool) -> None:
        super().__init__(type(cause).__name__)
        self.started = started


async def forward(handle: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve this connection on the replica behind `handle`: the client's events there, the app's send
    events back here. Returns when the connection ends (the client leaving ends it quietly); raises
    `ReplicaFailed` when the replica does."""
    connection = uuid.uuid4().hex
    portable = {key: scope[key] for key in PORTABLE_SCOPE_KEYS if key in scope}
    events = handle.options(method_name="connect", stream=True).remote(connection, portable)
    pump = asyncio.create_task(_pump(handle, connection, receive))
    started = passed_on = 0
    try:
        async for event in events:
            if event["type"] in ("websocket.accept", "http.response.start"):
                started = 1
            await send(event)
            passed_on += 1
            if passed_on % ACK_EVERY == 0:
                handle.ack.remote(connection, passed_on)
    except Exception as error:
        if not _client_gone(error):
            raise ReplicaFailed(error, bool(started)) from error
    finally:
        pump.cancel()


async def _pump(handle: Any, connection: str, receive: Receive) -> None:
    """The client's events to the replica, in order: those that came while one call was on its way go
    together in the next."""
    waiting: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX_SIZE)

    async def read() -> None:
        while True:
            event = await receive()
            await waiting.put(event)
            if event["type"] in DISCONNECTS:
                return

    reader = asyncio.create_task(read())
    try:
        while True:
            batch = [await waiting.get()]
            while not waiting.empty():
                batch.append(waiting.get_nowait())
            if not await handle.push.remote(connection, batch):
                return
            if batch[-1]["type"] in DISCONNECTS:
                return
    except Exception:  # the replica is gone: `forward` says so
        return
    finally:
        reader.cancel()


def _client_gone(error: BaseException) -> bool:
    return type(error).__name__ in ("ClientDisconnect", "WebSocketDisconnect") or isinstance(error, OSError)


async def refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    """Answer a connection that no replica can take: a websocket hears why and closes, a request 503."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await say_and_close(send, message)
        return
    response = JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "1"})
    await response(scope, receive, send)


async def say_and_close(send: Send, message: str) -> None:
    try:
        await send({"type": "websocket.send", "text": json.dumps({"status": "error", "message": message})})
        await send({"type": "websocket.close", "code": 1011})
    except Exception:  # the client left already
        pass
