"""--replicas N, --ray-address: one server spread over several engine replicas with Ray Serve
(docs/scale-out.md).

- Replicas: N Serve applications, `live-diffusion-0` to `-{N-1}`, each one `EngineReplica` deployment
  with one replica (one GPU, or a CPU share without GPUs). A replica runs the very app of the
  single-process server (`create_app`: sessions, worker, pipeline, batching across its users), driven
  over deployment handles instead of a socket. Serve restarts a replica that dies.
- This process: uvicorn on --host and --port as always (the same websocket transport, origin checks
  and logs), with the `Gateway` in front. It pins each user to one replica on the user's first
  request, websocket or stream or viewer token, in whichever order they come (the replica with the
  fewest users; one of them is full: "Server is full" as ever), and forwards the ASGI events of each
  of the user's connections to that replica and back. Health and metrics gather the replicas'.

Why not Serve's own HTTP proxy: it cannot pin a user's websocket and stream to one replica without
reading private request internals, it hides a replica's death from the users (their sockets drop
without a word) and it runs uvicorn with its own settings.

Flow control across the hop: the gateway reads a client's messages as the replica takes them in (an
inbox of `INBOX_SIZE` events), and a replica sends at most `WINDOW` events ahead of what the gateway
has passed on to the client, so a slow client or viewer never piles frames up in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from server.config import Config
from server.origins import OriginGuard, is_loopback_name
from server.sessions import canonical_user_id

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "live-diffusion-{index}"
INBOX_SIZE = 8  # client events a replica holds for its app before the gateway waits
WINDOW = 32  # events a replica sends ahead of what the gateway has passed on
ACK_EVERY = 16  # the gateway tells the replica what it has passed on, every so many events
POLL_S = 1.0  # how often the gateway asks each replica how it is
POLL_TIMEOUT_S = 2.0  # a replica that takes longer to answer counts as not alive (yet)
# Ray does not keep a streaming call and the calls after it in order: a connection's first `push` may
# reach the replica before its `connect` has started. It waits this long for the connection to appear.
ARRIVAL_WAIT_S = 10.0
REPLICA_GONE = "The engine serving this session stopped (it is being restarted): reconnect to go on"
# Each open websocket, stream and viewer holds one request of its replica for its whole life: far more
# than Serve's default of 5, so that the app's own limits (--max-users, streams, viewers) decide.
MAX_ONGOING_REQUESTS = 10_000
PORTABLE_SCOPE_KEYS = (
    "type", "asgi", "http_version", "scheme", "method", "path", "raw_path", "query_string", "root_path",
    "headers", "client", "server", "subprotocols",
)


# --- the replica ------------------------------------------------------------------------------------


class EngineReplica:
    """One engine: the single-process server's app (model, sessions, worker), served over handles."""

    def __init__(self, config: Config, index: int) -> None:
        from server.app import create_app
        from server.logs import setup_logging
        from server.main import keep_freed_memory, load_pipeline

        setup_logging(config.log_level)
        keep_freed_memory()
        self.index = index
        module, pipeline, safety_checker, device, dtype = load_pipeline(config)
        self.app = create_app(config, module, pipeline, device, dtype, safety_checker)
        self.live = self.app.state.live
        self._started: asyncio.Future[None] | None = None
        self._connections: dict[str, _Connection] = {}
        self._arrivals: dict[str, asyncio.Future[_Connection]] = {}  # pushed to before connect started

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
        state = _Connection()
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


@dataclass
class _Connection:
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


# --- the gateway ------------------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    handle: Any
    alive: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


class Gateway:
    """The ASGI app of this process: each connection goes to its user's replica (see the module
    docstring); health, queue and metrics gather the replicas'; the web page is served from here."""

    def __init__(self, config: Config, handles: list[Any]) -> None:
        from server.app import FRONTEND_BUILD, PLACEHOLDER_PAGE

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
        ]
        if (FRONTEND_BUILD / "index.html").is_file():
            routes.append(Mount("/", StaticFiles(directory=FRONTEND_BUILD, html=True)))
        else:
            page = PLACEHOLDER_PAGE.read_text()
            routes.append(Route("/", lambda request: HTMLResponse(page)))
        middleware = [Middleware(OriginGuard, allowed_origins=config.allowed_origins,
                                 loopback_only=is_loopback_name(config.host))]
        if config.allowed_origins:
            middleware.append(Middleware(CORSMiddleware, allow_origins=config.allowed_origins,
                                         allow_methods=["GET", "POST"], allow_headers=["*"]))
        self.app = Starlette(routes=routes, middleware=middleware, lifespan=self._lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # --- what main.serve needs of it ---

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
        query = dict(part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part)
        user_id = canonical_user_id(query.get("user_id", ""))
        replica = self.replicas[self.pins[user_id]] if user_id in self.pins else self._least_loaded()
        await self.forward(replica, scope, receive, send)

    async def any_replica(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forward(self._least_loaded(), scope, receive, send)

    def _least_loaded(self) -> Replica | None:
        live = [replica for replica in self.replicas if replica.alive]
        return min(live, key=lambda r: (r.stats.get("health", {}).get("users", 0), r.index)) if live else None

    # --- forwarding ---

    async def forward(self, replica: Replica | None, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve this connection on `replica`: its receive events there, its send events back here."""
        websocket = scope["type"] == "websocket"
        if replica is None:
            await _refuse(scope, receive, send, "No engine is running right now; try again shortly")
            return
        task = asyncio.current_task()
        if websocket and task is not None:
            self.forwarding.add(task)
        connection = uuid.uuid4().hex
        portable = {key: scope[key] for key in PORTABLE_SCOPE_KEYS if key in scope}
        events = replica.handle.options(method_name="connect", stream=True).remote(connection, portable)
        pump = asyncio.create_task(self._pump(replica, connection, receive))
        started = passed_on = 0
        try:
            async for event in events:
                if event["type"] in ("websocket.accept", "http.response.start"):
                    started = 1
                await send(event)
                passed_on += 1
                if passed_on % ACK_EVERY == 0:
                    replica.handle.ack.remote(connection, passed_on)
        except Exception as error:  # the replica died or cannot be reached
            if _client_gone(error):
                return
            log.warning("Replica %d failed while serving a connection: %s", replica.index, type(error).__name__)
            self._replica_failed(replica)
            if websocket and started:
                await _say_and_close(send, REPLICA_GONE)
            elif not started:
                await _refuse(scope, receive, send, REPLICA_GONE)
        finally:
            pump.cancel()
            if task is not None:
                self.forwarding.discard(task)

    async def _pump(self, replica: Replica, connection: str, receive: Receive) -> None:
        """The client's events to the replica, in order: those that came while one call was on its way
        go together in the next."""
        waiting: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX_SIZE)

        async def read() -> None:
            while True:
                event = await receive()
                await waiting.put(event)
                if event["type"] in ("websocket.disconnect", "http.disconnect"):
                    return

        reader = asyncio.create_task(read())
        try:
            while True:
                batch = [await waiting.get()]
                while not waiting.empty():
                    batch.append(waiting.get_nowait())
                if not await replica.handle.push.remote(connection, batch):
                    return
                if batch[-1]["type"] in ("websocket.disconnect", "http.disconnect"):
                    return
        except Exception:  # the replica is gone: the forwarding loop says so
            return
        finally:
            reader.cancel()

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
            {"id": r.index, "users": r.stats.get("health", {}).get("users", 0) if r.alive else 0, "alive": r.alive,
             "status": r.stats.get("health", {}).get("status", "unknown"), "pid": r.stats.get("pid")}
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
        body = {**(healths[0] if healths else {}), "status": status, "replicas": replicas}
        for counter in ("users", "streams", "viewers", "frames_generated", "frames_reused", "batches"):
            body[counter] = sum(health.get(counter, 0) for health in healths)
        body["max_users"] = self.config.max_users * len(self.replicas)
        body.pop("worker", None)  # one per replica: in the replicas' own health
        return JSONResponse(body, status_code=200 if serving and not self.shutdown.is_set() else 503)

    async def queue(self, request: Request) -> Response:
        await self._poll()
        return JSONResponse({"queue_size": sum(r.stats.get("health", {}).get("users", 0) for r in self.replicas if r.alive)})

    async def metrics(self, request: Request) -> Response:
        """Every replica's metrics, each sample labelled with its replica."""
        live = [replica for replica in self.replicas if replica.alive]
        texts = await asyncio.gather(*(replica.handle.metrics.remote() for replica in live), return_exceptions=True)
        lines: list[str] = []
        described: set[str] = set()
        for replica, text in zip(live, texts):
            if isinstance(text, BaseException):
                continue
            for line in text.splitlines():
                if line.startswith("#"):
                    if line not in described:
                        described.add(line)
                        lines.append(line)
                elif line:
                    lines.append(_with_label(line, "replica", str(replica.index)))
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")

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


class _Raw:
    """A route endpoint that takes the raw ASGI connection (Starlette would hand a method a Request)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def _with_label(sample: str, name: str, value: str) -> str:
    """A Prometheus sample line with one more label."""
    match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?(\s.*)$", sample)
    if not match:
        return sample
    metric, labels, rest = match.groups()
    inner = labels[1:-1] if labels else ""
    joined = f'{inner},{name}="{value}"' if inner else f'{name}="{value}"'
    return f"{metric}{{{joined}}}{rest}"


def _client_gone(error: BaseException) -> bool:
    return type(error).__name__ in ("ClientDisconnect", "WebSocketDisconnect") or isinstance(error, OSError)


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await _say_and_close(send, message)
        return
    response = JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "1"})
    await response(scope, receive, send)


async def _say_and_close(send: Send, message: str) -> None:
    try:
        await send({"type": "websocket.send", "text": json.dumps({"status": "error", "message": message})})
        await send({"type": "websocket.close", "code": 1011})
    except Exception:  # the client left already
        pass


# --- main ---------------------------------------------------------------------------------------------


def main(config: Config) -> int:
    """Start (or join) Ray, deploy the replicas (each loads the model), serve the gateway; stop it all
    on Ctrl-C."""
    import ray
    from ray import serve
    from ray.serve.api import RunTarget

    from server.main import serve as run_uvicorn

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    log.info("Scale-out: %s Ray, %d engine replicas", f"joining {config.ray_address}" if config.ray_address else "starting",
             config.replicas)
    ray.init(
        address=config.ray_address or None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    try:
        serve.start(proxy_location="Disabled")  # the gateway here is the only way in
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus and gpus < config.replicas:
            log.error("--replicas %d needs a GPU each; the cluster has %d", config.replicas, gpus)
            return 2
        per_replica = {"num_gpus": 1} if gpus else {"num_cpus": resources.get("CPU", 1) / config.replicas}
        deployment = serve.deployment(
            EngineReplica,
            name="engine",
            logging_config={"enable_access_log": False, "log_level": "WARNING"},  # no line per forwarded event
            num_replicas=1,
            max_ongoing_requests=MAX_ONGOING_REQUESTS,
            ray_actor_options=per_replica,
            health_check_period_s=2.0,
            health_check_timeout_s=30.0,
            graceful_shutdown_timeout_s=2.0,
        )
        replica_config = config.model_copy(update={"replicas": 1, "ray_address": ""})
        handles = serve.run_many([
            RunTarget(deployment.bind(replica_config, index), name=APP_NAME.format(index=index), route_prefix=None)
            for index in range(config.replicas)
        ])
        log.info("%d replicas serving in %.1f s (%s each)", config.replicas, time.perf_counter() - started,
                 "one GPU" if gpus else f"{per_replica['num_cpus']:g} CPU")
        gateway = Gateway(config, handles)
        return run_uvicorn(gateway, gateway, config)
    finally:
        log.info("Stopping the replicas")
        if config.ray_address:
            for index in range(config.replicas):
                serve.delete(APP_NAME.format(index=index))
        else:
            serve.shutdown()
        ray.shutdown()
