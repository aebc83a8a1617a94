"""`EngineReplica`: one engine of the scale-out, a Ray Serve deployment running the very app of the
single server (`create_app`: model, sessions, worker, batching across its users), its connections
driven over deployment handles (server/scale_out/hop.py) instead of a socket."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, AsyncIterator

from server.config import Config
from server.scale_out.hop import ARRIVAL_WAIT_S, WINDOW, ReplicaEnd

log = logging.getLogger(__name__)


class EngineReplica:
    def __init__(self, config: Config, index: int) -> None:
        from server.app import create_app
        from server.engine import keep_freed_memory, load_pipeline
        from server.logs import setup_logging

        setup_logging(config.log_level)
        keep_freed_memory()
        self.index = index
        self.app = create_app(config, load_pipeline(config))
        self.live = self.app.state.live
        self._started: asyncio.Future[None] | None = None
        self._connections: dict[str, ReplicaEnd] = {}
        self._arrivals: dict[str, asyncio.Future[ReplicaEnd]] = {}  # pushed to before connect started

    async def _start(self) -> None:
        """Run the app's start-up (its worker thread) once, on this replica's event loop."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._enter_lifespan())
        await self._started

    async def _enter_lifespan(self) -> None:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()

    async def connect(self, connection: str, scope: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Serve one connection (websocket or HTTP request): the app's send events, as it sends them.
        Its receive events come through `push`; `ack` says what the gateway has passed on."""
        await self._start()
        state = ReplicaEnd()
        self._connections[connection] = state
        arrival = self._arrivals.pop(connection, None)
        if arrival is not None and not arrival.done():
            arrival.set_result(state)

        async def send(event: dict[str, Any]) -> None:
            await state.outbox.put(event)

        async def run() -> None:
            try:
                await self.app(dict(scope), state.inbox.get, send)
            except Exception:
                log.exception("A connection's request failed")
            finally:
                await state.outbox.put(None)

        task = asyncio.create_task(run())
        sent = 0
        try:
            while (event := await state.outbox.get()) is not None:
                while sent - state.acked >= WINDOW:
                    await state.wait_for_ack()
                yield event
                sent += 1
        finally:
            task.cancel()
            self._connections.pop(connection, None)

    async def push(self, connection: str, events: list[dict[str, Any]]) -> bool:
        """A connection's receive events, in order; False once the connection is gone (or when it
        has not started within ARRIVAL_WAIT_S)."""
        state = self._connections.get(connection)
        if state is None:
            arrival = self._arrivals.setdefault(connection, asyncio.get_running_loop().create_future())
            try:
                state = await asyncio.wait_for(asyncio.shield(arrival), ARRIVAL_WAIT_S)
            except asyncio.TimeoutError:  # not yet the built-in TimeoutError on Python 3.10
                return False
            finally:
                if self._arrivals.get(connection) is arrival and not arrival.done():
                    del self._arrivals[connection]
        for event in events:
            await state.inbox.put(event)
        return True

    async def ack(self, connection: str, passed_on: int) -> None:
        state = self._connections.get(connection)
        if state is not None:
            state.acknowledge(passed_on)

    async def stats(self) -> dict[str, Any]:
        """What the gateway's /api/health shows of this replica, and its process id."""
        await self._start()
        status, body = await _get(self.app, "/api/health")
        return {"health": json.loads(body), "healthy": status == 200, "pid": os.getpid()}

    async def metrics(self) -> str:
        await self._start()
        return (await _get(self.app, "/metrics"))[1].decode()

    async def has_viewer(self, token: str) -> bool:
        return self.live.sessions.get_by_viewer_token(token) is not None

    async def begin_shutdown(self) -> None:
        """Tell every session the server is shutting down, and let them say it."""
        self.live.begin_shutdown()
        await self.live.conversations_ended(timeout=1.0)


async def _get(app: Any, path: str) -> tuple[int, bytes]:
    """GET `path` from an ASGI app in this process: (status, body)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "scheme": "http",
        "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
    }
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])
    status, body = 500, b""

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(event: dict[str, Any]) -> None:
        nonlocal status, body
        if event["type"] == "http.response.start":
            status = event["status"]
        elif event["type"] == "http.response.body":
            body += event.get("body", b"")

    await app(scope, receive, send)
    return status, body
