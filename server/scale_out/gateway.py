"""The `Gateway`: the ASGI app of the scale-out's own process. It pins each user to one replica on the
user's first request (websocket, stream or viewer token, in whichever order they come: the replica
with the fewest users) and forwards each of the user's connections there (server/scale_out/hop.py);
health, queue and metrics gather the replicas'; the web page and the guards are the single server's
(server/web.py)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from server.config import Config
from server.health import HealthResponse, ReplicaHealth
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.scale_out import hop
from server.sessions import canonical_user_id
from server.web import guards, page_routes

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the gateway asks each replica how it is
POLL_TIMEOUT_S = 2.0  # a replica that takes longer to answer counts as not alive (yet)
REPLICA_GONE = "The engine serving this session stopped (it is being restarted): reconnect to go on"
SUMMED = (
    "users", "streams", "viewers", "frames_generated", "frames_reused", "batches", "temporal_memory_mb",
    "temporal_memory_budget_mb",
)


@dataclass
class Replica:
    index: int
    handle: Any
    alive: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> int:
        return int(self.stats.get("health", {}).get("users", 0)) if self.alive else 0


class Gateway:
    def __init__(self, config: Config, handles: list[Any]) -> None:
        self.config = config
        self.replicas = [Replica(index, handle) for index, handle in enumerate(handles)]
        self.pins: dict[str, int] = {}  # user id -> replica index, while the user has a connection
        self.connections: dict[str, int] = {}  # user id -> its connections in progress
        self.viewer_replicas: dict[str, int] = {}  # viewer token -> replica index, as found
        self.forwarding: set[asyncio.Task[Any]] = set()  # websocket connections in progress
        self.shutdown = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        routes: list[Any] = [
            WebSocketRoute("/api/ws/{user_id}", _Raw(self.user_connection)),
            Route("/api/stream/{user_id}", _Raw(self.user_connection)),
            Route("/api/viewer-token/{user_id}", _Raw(self.user_connection)),
            Route("/api/view/{token}", _Raw(self.viewer_connection)),
            Route("/api/process", _Raw(self.process_connection), methods=["POST"]),
            Route("/api/health", self.health),
            Route("/api/queue", self.queue),
            Route("/metrics", self.metrics),
            Route("/api/settings", _Raw(self.any_replica)),
            Route("/docs", _Raw(self.any_replica)),
            Route("/openapi.json", _Raw(self.any_replica)),
            *page_routes(),
        ]
        self.app = Starlette(routes=routes, middleware=guards(config), lifespan=self._lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # --- what engine.serve needs of it ---

    def begin_shutdown(self) -> None:
        """Ctrl-C: every replica tells its sessions; safe to call from a signal handler."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._shutdown()))

    async def _shutdown(self) -> None:
        self.shutdown.set()
        await asyncio.gather(
            *(replica.handle.begin_shutdown.remote() for replica in self.replicas if replica.alive),
            return_exceptions=True,
        )

    async def conversations_ended(self, timeout: float) -> None:
        if self.forwarding:
            await asyncio.wait(set(self.forwarding), timeout=timeout)

    # --- routing ---

    def replica_for_user(self, user_id: str) -> Replica | None:
        """The user's replica: pinned on the user's first request to the live replica with the fewest
        users. No await between the look-up and the pin: a racing websocket and stream agree."""
        index = self.pins.get(user_id)
        if index is not None and self.replicas[index].alive:
            return self.replicas[index]
        live = [replica for replica in self.replicas if replica.alive]
        if not live:
            return None
        users = {replica.index: 0 for replica in live}
        for pinned in self.pins.values():
            if pinned in users:
                users[pinned] += 1
        chosen = min(live, key=lambda replica: (users[replica.index], replica.index))
        self.pins[user_id] = chosen.index
        return chosen

    async def user_connection(self, scope: Scope, receive: Receive, send: Send) -> None:
        user_id = canonical_user_id(scope["path_params"]["user_id"]) or scope["path_params"]["user_id"]
        replica = self.replica_for_user(user_id)
        self.connections[user_id] = self.connections.get(user_id, 0) + 1
        try:
            await self.forward(replica, scope, receive, send)
        finally:
            self.connections[user_id] -= 1
            if not self.connections[user_id]:
                del self.connections[user_id]
                self.pins.pop(user_id, None)

    async def viewer_connection(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = scope["path_params"]["token"]
        index = self.viewer_replicas.get(token)
        if index is None:
            live = [replica for replica in self.replicas if replica.alive]
            found = await asyncio.gather(
                *(replica.handle.has_viewer.remote(token) for replica in live), return_exceptions=True
            )
            index = next((replica.index for replica, yes in zip(live, found) if yes is True), None)
            if index is not None:
                self.viewer_replicas[token] = index
        replica = self.replicas[index] if index is not None else self._least_loaded()
        await self.forward(replica, scope, receive, send)  # an unknown token gets the replica's 404

    async def process_connection(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One-shot requests: the replica of `?user_id=` when that user is connected, else the least
        loaded."""
        query = parse_qs(scope["query_string"].decode("latin-1"))
        user_id = canonical_user_id(query.get("user_id", [""])[0])
        replica = self.replicas[self.pins[user_id]] if user_id in self.pins else self._least_loaded()
        await self.forward(replica, scope, receive, send)

    async def any_replica(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forward(self._least_loaded(), scope, receive, send)

    def _least_loaded(self) -> Replica | None:
        live = [replica for replica in self.replicas if replica.alive]
        return min(live, key=lambda r: (r.users, r.index)) if live else None

    async def forward(self, replica: Replica | None, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve this connection on `replica`; if it fails, its users hear so and it counts as dead."""
        websocket = scope["type"] == "websocket"
        if replica is None:
            await hop.refuse(scope, receive, send, "No engine is running right now; try again shortly")
            return
        task = asyncio.current_task()
        if websocket and task is not None:
            self.forwarding.add(task)
        try:
            await hop.forward(replica.handle, scope, receive, send)
        except hop.ReplicaFailed as failure:
            log.warning("Replica %d failed while serving a connection: %s", replica.index, failure)
            self._replica_failed(replica)
            if websocket and failure.started:
                await hop.say_and_close(send, REPLICA_GONE)
            elif not failure.started:
                await hop.refuse(scope, receive, send, REPLICA_GONE)
        finally:
            if task is not None:
                self.forwarding.discard(task)

    def _replica_failed(self, replica: Replica) -> None:
        replica.alive = False
        for user_id in [user for user, index in self.pins.items() if index == replica.index]:
            del self.pins[user_id]
        for token in [token for token, index in self.viewer_replicas.items() if index == replica.index]:
            del self.viewer_replicas[token]

    # --- what this process answers itself ---

    async def health(self, request: Request) -> Response:
        await self._poll()  # what is true now, not a second ago
        replicas = [
            ReplicaHealth(id=r.index, alive=r.alive, status=r.stats.get("health", {}).get("status", "unknown"),
                          users=r.users, pid=r.stats.get("pid"))
            for r in self.replicas
        ]
        healths = [r.stats["health"] for r in self.replicas if r.alive and "health" in r.stats]
        serving = [r for r in self.replicas if r.alive and r.stats.get("healthy")]
        if self.shutdown.is_set():
            status = "shutting down"
        elif len(serving) == len(self.replicas):
            status = "ok"
        elif serving:
            status = "degraded"  # some replicas serve, the others are being restarted
        else:
            status = "restarting"
        first = healths[0] if healths else {}
        health = HealthResponse(
            status=status,
            model_loaded=any(h.get("model_loaded") for h in healths),
            pipeline=first.get("pipeline", self.config.pipeline),
            model=first.get("model", ""),
            device=first.get("device", ""),
            dtype=first.get("dtype", ""),
            max_users=self.config.max_users * len(self.replicas),
            worker=None,  # one per replica: in the replicas' own health
            replicas=replicas,
            **{counter: sum(h.get(counter, 0) for h in healths) for counter in SUMMED},
        )
        return JSONResponse(health.model_dump(mode="json"), status_code=200 if health.serving else 503)

    async def queue(self, request: Request) -> Response:
        await self._poll()
        return JSONResponse({"queue_size": sum(r.users for r in self.replicas)})

    async def metrics(self, request: Request) -> Response:
        """Every replica's metrics, each sample labelled with its replica."""
        live = [replica for replica in self.replicas if replica.alive]
        texts = await asyncio.gather(*(replica.handle.metrics.remote() for replica in live), return_exceptions=True)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Relabelled([(str(r.index), text) for r, text in zip(live, texts) if isinstance(text, str)]))
        return Response(generate_latest(registry), media_type=METRICS_CONTENT_TYPE)

    # --- start-up ---

    @asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        await self._poll()  # the replicas are up (serve.run waited for them): know it before the first user
        poller = asyncio.create_task(self._poll_forever())
        yield
        poller.cancel()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._poll()

    async def _poll(self) -> None:
        async def one(replica: Replica) -> None:
            try:
                replica.stats = await asyncio.wait_for(replica.handle.stats.remote(), POLL_TIMEOUT_S)
                if not replica.alive:
                    log.info("Replica %d is serving", replica.index)
                replica.alive = True
            except Exception:
                if replica.alive:
                    log.warning("Replica %d does not answer", replica.index)
                    self._replica_failed(replica)

        await asyncio.gather(*(one(replica) for replica in self.replicas))


class _Relabelled:
    """A Prometheus collector: the metrics texts of the replicas, parsed, each sample labelled with its
    replica (`replica="0"`)."""

    def __init__(self, texts: list[tuple[str, str]]) -> None:
        self.texts = texts

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        for replica, text in self.texts:
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                merged.samples.extend(sample._replace(labels={**sample.labels, "replica": replica}) for sample in family.samples)
        return list(families.values())


class _Raw:
    """A route endpoint that takes the raw ASGI connection (Starlette would hand a method a Request)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)
