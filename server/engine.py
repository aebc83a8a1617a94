"""The engine of a server process: load the pipeline once (and warm it up), and run uvicorn with an
app until Ctrl-C. server/main.py calls it for the single server, server/scale_out for its gateway and
each replica.

uvicorn is given the app object (never an import string, which would import a module and load the
model a second time).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Protocol

import uvicorn

from server.config import Config

log = logging.getLogger("live_diffusion")


class Shutdown(Protocol):
    """What the server's app (or the scale-out gateway) does for Ctrl-C."""

    def begin_shutdown(self) -> None:
        """End every session now: safe to call from a signal handler."""

    async def conversations_ended(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the sessions' last messages to go out."""


class Server(uvicorn.Server):
    """uvicorn, plus: say where to connect once listening, and end open streams at once on Ctrl-C
    (uvicorn would otherwise wait for every MJPEG response to finish)."""

    def __init__(self, config: uvicorn.Config, live: Shutdown, scheme: str) -> None:
        super().__init__(config)
        self.live = live
        self.scheme = scheme
        self.interrupted = False  # Ctrl-C (SIGINT) ended it

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            host = self.config.host
            shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            log.info("Open %s://%s:%d", self.scheme, shown, port)
            if host not in ("0.0.0.0", "::"):
                if self.scheme == "https":
                    log.info("Only this machine can connect: add --host 0.0.0.0 for phones on the LAN")
                return
            from server.origins import lan_addresses

            for address in lan_addresses():
                log.info("On a phone or another machine: %s://%s:%d", self.scheme, address, port)
            if self.scheme == "http":
                log.info("Browsers give cameras only to https pages: add --self-signed for phones")

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.interrupted = self.interrupted or sig == signal.SIGINT
        self.live.begin_shutdown()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Any = None) -> None:
        # Each websocket client hears "Server is shutting down" before uvicorn closes the connections.
        await self.live.conversations_ended(timeout=1.0)
        await self._closing_handshakes_done(timeout=1.0)
        await super().shutdown(sockets)

    async def _closing_handshakes_done(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the clients to answer the websockets' close frames. uvicorn's
        shutdown closes every connection at once; a socket closed with a client's frame still unread
        is reset, and a reset makes the client's system drop what it had not yet read: the last
        messages, "Server is shutting down" among them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            getattr(connection, "close_sent", False) for connection in self.server_state.connections
        ):
            await asyncio.sleep(0.02)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of returning it to the system at once.

    Every frame allocates a few buffers of about a megabyte (the decoded frame, the image, the JPEG);
    by default glibc gives each back to the system as soon as it is freed (its top-of-heap trim and
    its mmap threshold) and page-faults it in again for the next frame. That cost as much CPU as all
    the rest of the serving path besides the JPEG codec (docs/benchmarks.md, serving path). Frames up
    to 32 MB (the default limit of --max-frame-pixels decodes to 12 MB) now reuse freed memory; what
    is kept is bounded by what the busiest moment used. Linux with glibc only; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 256 * 2**20)


@dataclass(frozen=True)
class LoadedPipeline:
    """A pipeline built and warmed up, with what the app needs to know of it."""

    module: ModuleType  # pipelines/<name>.py: its Info, InputParams
    pipeline: Any  # its Pipeline, built (pipelines.Pipeline)
    safety_checker: Callable[[Any], Any] | None
    device: str
    dtype: str
    temporal_budget: int  # bytes all streams' temporal memories may hold together (--temporal-memory-mb)


def load_pipeline(config: Config) -> LoadedPipeline:
    """Import the pipeline module, build it (and the safety checker), warm it up."""
    import pipelines

    # An unknown name, or set-up choices that do not fit, fail here: before any model loads.
    module = pipelines.load_module(config.pipeline, config.set_up_choices())
    from pipelines._device import default_temporal_budget, resolve_device, resolve_dtype

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    model = "miniature random models (--tiny)" if config.tiny else (config.model_id or module.MODEL_ID)
    log.info("Loading pipeline %r: %s on %s, %s", config.pipeline, model, device, str(dtype).removeprefix("torch."))
    started = time.perf_counter()
    pipeline = module.Pipeline(config.model_options(), device, dtype)
    safety_checker = None
    if config.safety_checker:
        from pipelines._safety import SafetyChecker

        safety_checker = SafetyChecker(config.model_options(), device, dtype)
    loaded = time.perf_counter()
    log.info("Model loaded in %.1f s; warming up", loaded - started)
    _warm_up(module, pipeline, config.tiny)
    log.info("Warm-up frame took %.2f s", time.perf_counter() - loaded)
    if config.temporal_memory_mb is None:
        temporal_budget = default_temporal_budget(device)
    else:
        temporal_budget = int(config.temporal_memory_mb * 2**20)
    return LoadedPipeline(
        module, pipeline, safety_checker, str(device), str(dtype).removeprefix("torch."), temporal_budget
    )


def _warm_up(module: Any, pipeline: Any, tiny: bool) -> None:
    # One frame at the default size: compiles what needs compiling, and proves the model runs
    # before the first user arrives. Miniature models compile nothing worth it: the smallest size
    # proves as much (an SDXL set-up at its default 1024 x 1024 took 9 s of a test's CPU).
    from PIL import Image

    params = pipeline.InputParams()
    if tiny and "width" in type(params).model_fields:
        fields = type(params).model_fields
        smallest = {key: min(m.ge for m in fields[key].metadata if hasattr(m, "ge")) for key in ("width", "height")}
        params = params.model_copy(update=smallest)
    size = (getattr(params, "width", 512), getattr(params, "height", 512))
    image = Image.new("RGB", size, (127, 127, 127)) if module.Info().input_mode == "image" else None
    pipeline.predict(params, image)


def serve(app: Any, live: Shutdown, config: Config) -> int:
    """Run uvicorn with `app` until Ctrl-C; `live` ends the sessions when asked (`begin_shutdown`) and
    says when their last messages are out (`conversations_ended`)."""
    from server.origins import is_loopback_name
    from server.transports import ConnectionLimits, protocol_classes
    from server.web import FRONTEND_BUILD

    if not (FRONTEND_BUILD / "index.html").is_file():
        log.warning("The web page is not built (%s missing): run ./build-run.sh, or "
                    "npm --prefix frontend ci && npm --prefix frontend run build", FRONTEND_BUILD / "index.html")
    if not config.max_users and not is_loopback_name(config.host):
        log.warning("--max-users 0: no limit on users, on a server others can reach")
    certfile, keyfile = config.ssl_certfile, config.ssl_keyfile
    if config.self_signed:
        from server.tls import self_signed_certificate

        certfile, keyfile = (str(path) for path in self_signed_certificate())
    tls = bool(certfile)
    http, ws = protocol_classes(ConnectionLimits(config.header_timeout, config.max_connections_per_address))
    server = Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            ssl_certfile=certfile or None,
            ssl_keyfile=keyfile or None,
            http=http,
            ws=ws,
            ws_max_size=config.max_frame_bytes * 2,  # larger frames get a clear error, not a dropped socket
            ws_per_message_deflate=False,  # JPEG frames do not compress: deflating them only costs CPU at both ends
            limit_concurrency=config.limit_concurrency or None,
            timeout_graceful_shutdown=1,
            log_config=None,
            log_level=config.log_level,
        ),
        live,
        "https" if tls else "http",
    )
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        return 130
    # A process started with Ctrl-C ignored (a background job of a script) gets no KeyboardInterrupt
    # from uvicorn's re-raise, but was ended by it all the same.
    return 130 if server.interrupted else 0
