"""create_app(config, pipeline module, pipeline) -> FastAPI: the routes, and nothing else of substance."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Callable, Literal

import markdown2
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from pipelines import Pipeline
from server import oneshot, protocol, streaming
from server.config import Config
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.metrics import Metrics
from server.origins import OriginGuard, is_loopback_name
from server.outputs import Outputs
from server.sessions import Session, SessionManager, TooManyStreams
from server.worker import SimilarityFilter, Worker

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
FRONTEND_BUILD = REPO_ROOT / "frontend" / "build"
PLACEHOLDER_PAGE = Path(__file__).resolve().parent / "placeholder.html"
OUTPUTS_CLOSE_S = 2.0  # at shutdown: how long the outputs get to remove their NDI sources, Syphon servers
SESSION_WAIT_S = 1.0  # a stream or viewer-token request waits this long for its user's websocket to connect


class SettingsResponse(BaseModel):
    info: dict[str, Any]
    input_params: dict[str, Any]
    max_queue_size: int
    page_content: str


class QueueResponse(BaseModel):
    queue_size: int


class WorkerHealth(BaseModel):
    alive: bool = Field(description="The inference thread runs")
    busy_s: float | None = Field(description="Seconds the model call in progress has taken so far; null when idle")
    stalled: bool = Field(description="A model call has outlived --frame-deadline and not yet returned")
    restarts: int = Field(description="Inference threads started after one ended")
    frame_deadline_s: float


class HealthResponse(BaseModel):
    status: Literal["ok", "starting", "stalled", "restarting", "shutting down"] = Field(
        description="ok: frames are being served (HTTP 200); anything else comes with HTTP 503"
    )
    model_loaded: bool = Field(description="The inference thread holds the loaded pipeline")
    pipeline: str
    model: str
    device: str
    dtype: str
    users: int
    max_users: int
    streams: int = Field(description="Open /api/stream responses")
    viewers: int = Field(description="Open /api/view responses")
    frames_generated: int
    frames_reused: int
    batches: int
    worker: WorkerHealth | None


class ViewerTokenResponse(BaseModel):
    viewer_token: str
    view_path: str


def settings_response(module: ModuleType, params_type: type[BaseModel], max_users: int) -> SettingsResponse:
    """GET /api/settings: what the page builds its controls from (also written to the web page's test
    fixtures by scripts/settings_fixtures.py)."""
    info = module.Info()
    return SettingsResponse(
        info=module.Info.model_json_schema(),
        input_params=params_type.model_json_schema(),
        max_queue_size=max_users,
        page_content=markdown2.markdown(info.page_content) if info.page_content else "",
    )


@dataclass
class LiveServer:
    """What the routes share: built once per app, never a module global."""

    sessions: SessionManager
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    worker: Worker | None = None
    loop: asyncio.AbstractEventLoop | None = None
    conversations: set[asyncio.Task[Any]] = field(default_factory=set)  # websocket conversations running

    def begin_shutdown(self) -> None:
        """End every session and stream now (Ctrl-C): safe to call from any thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._shutdown)

    def _shutdown(self) -> None:
        self.shutdown.set()
        for session in self.sessions.all():
            session.send({"status": "timeout", "message": "Server is shutting down"})
            try:
                session.outbox.put_nowait(None)  # the writer sends what is queued, then the socket closes
            except asyncio.QueueFull:
                pass
            self.sessions.close(session)

    async def conversations_ended(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the conversations to send their last words and close."""
        if self.conversations:
            await asyncio.wait(set(self.conversations), timeout=timeout)

    def model_available(self) -> bool:
        """The inference thread runs and is not stuck past the frame deadline."""
        if self.worker is None or self.shutdown.is_set():
            return False
        state = self.worker.state()
        return state.alive and not state.stalled


def create_app(
    config: Config,
    module: ModuleType,
    pipeline: Pipeline,
    device: str,
    dtype: str,
    safety_checker: Callable[[Image.Image], Image.Image] | None = None,
) -> FastAPI:
    metrics = Metrics()
    outputs = Outputs(config, metrics)  # raises OutputUnavailable when one cannot run here
    sessions = SessionManager(
        config.max_users, max_viewers=config.max_viewers, outputs=outputs.for_session, metrics=metrics
    )
    live = LiveServer(sessions)
    info = module.Info()
    one_shot = oneshot.OneShot(
        sessions, pipeline.InputParams, info.input_mode,
        max_requests=config.max_process_requests, max_frame_bytes=config.max_frame_bytes,
        max_frame_pixels=config.max_frame_pixels, upload_timeout=config.upload_timeout,
        process_timeout=config.process_timeout, model_available=live.model_available, shutdown=live.shutdown,
    )
    settings = settings_response(module, pipeline.InputParams, config.max_users)
    model_name = "tiny" if config.tiny else (config.model_id or getattr(module, "MODEL_ID", ""))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live.loop = asyncio.get_running_loop()
        live.worker = Worker(
            pipeline,
            live.sessions,
            live.loop,
            jpeg_quality=config.jpeg_quality,
            max_frame_bytes=config.max_frame_bytes,
            max_frame_pixels=config.max_frame_pixels,
            frame_deadline=config.frame_deadline,
            safety_checker=safety_checker,
            max_batch=config.batch_size(device),
            batch_wait=config.batch_wait_ms / 1000,
            similarity_filter=(
                SimilarityFilter(config.similarity_threshold, config.max_skips) if config.similarity_filter else None
            ),
        )
        live.worker.start()
        supervisor = asyncio.create_task(live.worker.supervise_forever())
        yield
        live._shutdown()
        live.worker.stop()
        supervisor.cancel()
        live.worker = None
        await asyncio.to_thread(outputs.join, OUTPUTS_CLOSE_S)

    app = FastAPI(title="Live Diffusion", summary=f"{info.title}: {info.description}", lifespan=lifespan)
    app.state.live = live
    if config.allowed_origins:  # no CORS headers at all unless asked: other sites' pages get nothing
        app.add_middleware(CORSMiddleware, allow_origins=config.allowed_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(
        OriginGuard, allowed_origins=config.allowed_origins, loopback_only=is_loopback_name(config.host)
    )

    async def session_of(user_id: str) -> Session:
        session = await live.sessions.wait_for(user_id, SESSION_WAIT_S)
        if session is None:
            raise HTTPException(404, "No session with this id is connected: open the websocket first")
        return session

    @app.websocket("/api/ws/{user_id}")
    async def websocket(websocket: WebSocket, user_id: str) -> None:
        conversation = protocol.Conversation(websocket, live.sessions, pipeline.InputParams, info.input_mode, config)
        task = asyncio.current_task()
        assert task is not None
        live.conversations.add(task)
        try:
            await conversation.run(user_id)
        finally:
            live.conversations.discard(task)

    @app.get(
        "/api/stream/{user_id}",
        response_class=StreamingResponse,
        responses={404: {"model": oneshot.ErrorResponse}, 429: {"model": oneshot.ErrorResponse}},
    )
    async def stream(user_id: str) -> Response:
        """The session's MJPEG stream. Every open stream of a session gets every frame (a few per session)."""
        session = await session_of(user_id)
        try:
            return streaming.session_stream(session, live.sessions)
        except TooManyStreams as error:
            raise HTTPException(429, str(error)) from None

    @app.get("/api/settings")
    async def get_settings() -> SettingsResponse:
        return settings

    @app.get("/api/queue")
    async def get_queue() -> QueueResponse:
        return QueueResponse(queue_size=len(live.sessions))

    @app.get("/api/health", responses={503: {"model": HealthResponse, "description": "Not serving frames now"}})
    async def get_health(response: Response) -> HealthResponse:
        """Whether frames are being served (200) or not (503), and what is true of the server now."""
        worker = live.worker
        state = worker.state() if worker is not None else None
        if live.shutdown.is_set():
            status = "shutting down"
        elif state is None:
            status = "starting"
        elif state.stalled:
            status = "stalled"
        elif not state.alive:
            status = "restarting"
        else:
            status = "ok"
        response.status_code = 200 if status == "ok" else 503
        streams, viewers = live.sessions.counts()
        return HealthResponse(
            status=status,
            model_loaded=worker is not None and worker.pipeline is not None,
            pipeline=info.name,
            model=model_name,
            device=device,
            dtype=dtype,
            users=len(live.sessions),
            max_users=config.max_users,
            streams=streams,
            viewers=viewers,
            frames_generated=worker.frames_done if worker else 0,
            frames_reused=worker.frames_reused if worker else 0,
            batches=worker.batches if worker else 0,
            worker=WorkerHealth(**asdict(state), frame_deadline_s=config.frame_deadline) if state else None,
        )

    @app.get("/api/viewer-token/{user_id}", responses={404: {"model": oneshot.ErrorResponse}})
    async def get_viewer_token(user_id: str) -> ViewerTokenResponse:
        """The read-only viewer link of a connected session: GET `view_path` shows its frames."""
        session = await session_of(user_id)
        return ViewerTokenResponse(viewer_token=session.viewer_token, view_path=f"/api/view/{session.viewer_token}")

    @app.get(
        "/api/view/{token}",
        response_class=StreamingResponse,
        responses={404: {"model": oneshot.ErrorResponse}, 429: {"model": oneshot.ErrorResponse}},
    )
    async def view(token: str) -> Response:
        """A session's MJPEG stream for read-only viewers (up to --max-viewers), until the session ends."""
        session = live.sessions.get_by_viewer_token(token)
        if session is None:
            raise HTTPException(404, "No session has this viewer link: the session has ended, or the link is wrong")
        try:
            return streaming.viewer_stream(session, live.sessions, metrics.viewers)
        except TooManyStreams as error:
            raise HTTPException(429, str(error)) from None

    @app.post(
        "/api/process",
        response_class=Response,
        responses=oneshot.RESPONSES,
        openapi_extra=oneshot.openapi_body(pipeline.InputParams, info.input_mode),
    )
    async def process(request: Request) -> Response:
        """One image in (multipart: `file`, and the pipeline's parameters as fields), one JPEG out."""
        return Response(await one_shot.process(request), media_type="image/jpeg")

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics() -> Response:
        """Prometheus metrics: sessions, viewers, frames in, out and dropped, timings, errors by kind."""
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    if (FRONTEND_BUILD / "index.html").is_file():
        app.mount("/", StaticFiles(directory=FRONTEND_BUILD, html=True), name="frontend")
    else:
        placeholder = PLACEHOLDER_PAGE.read_text()

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def index() -> str:
            return placeholder

    return app
