"""create_app(config, pipeline module, pipeline) -> FastAPI: the routes, and nothing else of substance."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Callable

import markdown2
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel

from pipelines.base import Pipeline
from server import oneshot, protocol, streaming
from server.config import Config
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.metrics import Metrics
from server.outputs import Outputs
from server.sessions import SessionManager
from server.worker import SimilarityFilter, Worker

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
FRONTEND_BUILD = REPO_ROOT / "frontend" / "build"
PLACEHOLDER_PAGE = Path(__file__).resolve().parent / "placeholder.html"
OUTPUTS_CLOSE_S = 2.0  # at shutdown: how long the outputs get to remove their NDI sources, Syphon servers


class SettingsResponse(BaseModel):
    info: dict[str, Any]
    input_params: dict[str, Any]
    max_queue_size: int
    page_content: str


class QueueResponse(BaseModel):
    queue_size: int


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool
    pipeline: str
    model: str
    device: str
    dtype: str
    users: int
    max_users: int
    frames_generated: int
    frames_reused: int
    batches: int


class ViewerTokenResponse(BaseModel):
    viewer_token: str
    view_path: str


@dataclass
class LiveServer:
    """What the routes share: built once per app, never a module global."""

    sessions: SessionManager
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    worker: Worker | None = None
    loop: asyncio.AbstractEventLoop | None = None

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
    sessions = SessionManager(config.max_users, outputs=outputs.for_session, metrics=metrics)
    live = LiveServer(sessions)
    info = module.Info()
    one_shot = oneshot.OneShot(
        sessions, pipeline.InputParams, info.input_mode,
        max_requests=config.max_process_requests, max_frame_bytes=config.max_frame_bytes,
        max_frame_pixels=config.max_frame_pixels, shutdown=live.shutdown,
    )
    settings = SettingsResponse(
        info=module.Info.model_json_schema(),
        input_params=pipeline.InputParams.model_json_schema(),
        max_queue_size=config.max_users,
        page_content=markdown2.markdown(info.page_content) if info.page_content else "",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live.loop = asyncio.get_running_loop()
        live.worker = Worker(
            pipeline,
            live.sessions,
            live.loop,
            lambda session, result: protocol.deliver(live.sessions, session, result),
            config.jpeg_quality,
            safety_checker,
            max_batch=config.batch_size(device),
            batch_wait=config.batch_wait_ms / 1000,
            similarity_filter=(
                SimilarityFilter(config.similarity_threshold, config.max_skips) if config.similarity_filter else None
            ),
        )
        live.worker.start()
        yield
        live._shutdown()
        live.worker.stop()
        await asyncio.to_thread(outputs.join, OUTPUTS_CLOSE_S)

    app = FastAPI(title="Live Diffusion", summary=f"{info.title}: {info.description}", lifespan=lifespan)
    app.state.live = live
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"], allow_headers=["*"])

    @app.websocket("/api/ws/{user_id}")
    async def websocket(websocket: WebSocket, user_id: str) -> None:
        conversation = protocol.Conversation(websocket, live.sessions, pipeline.InputParams, info.input_mode, config)
        await conversation.run(user_id)

    @app.get("/api/stream/{user_id}", response_class=StreamingResponse)
    async def stream(user_id: str, request: Request) -> StreamingResponse:
        session = live.sessions.get(user_id)
        if session is None:
            raise HTTPException(404, "No session with this id is connected: open the websocket first")
        frames = streaming.mjpeg_stream(
            session, live.sessions, request, live.shutdown,
            on_start=lambda: protocol.request_frame_if_idle(live.sessions, session),
        )
        return StreamingResponse(frames, media_type=streaming.MEDIA_TYPE, headers=streaming.HEADERS)

    @app.get("/api/settings")
    async def get_settings() -> SettingsResponse:
        return settings

    @app.get("/api/queue")
    async def get_queue() -> QueueResponse:
        return QueueResponse(queue_size=len(live.sessions))

    @app.get("/api/health")
    async def get_health() -> HealthResponse:
        return HealthResponse(
            status="ok",
            model_loaded=True,
            pipeline=info.name,
            model="tiny" if config.tiny else (config.model_id or getattr(module, "MODEL_ID", "")),
            device=device,
            dtype=dtype,
            users=len(live.sessions),
            max_users=config.max_users,
            frames_generated=live.worker.frames_done if live.worker else 0,
            frames_reused=live.worker.frames_reused if live.worker else 0,
            batches=live.worker.batches if live.worker else 0,
        )

    @app.get("/api/viewer-token/{user_id}", responses={404: {"model": oneshot.ErrorResponse}})
    async def get_viewer_token(user_id: str) -> ViewerTokenResponse:
        """The read-only viewer link of a connected session: GET `view_path` shows its frames."""
        session = live.sessions.get(user_id)
        if session is None:
            raise HTTPException(404, "No session with this id is connected: open the websocket first")
        return ViewerTokenResponse(viewer_token=session.viewer_token, view_path=f"/api/view/{session.viewer_token}")

    @app.get("/api/view/{token}", response_class=StreamingResponse, responses={404: {"model": oneshot.ErrorResponse}})
    async def view(token: str, request: Request) -> StreamingResponse:
        """A session's MJPEG stream for any number of read-only viewers, until the session ends."""
        session = live.sessions.get_by_viewer_token(token)
        if session is None:
            raise HTTPException(404, "No session has this viewer link: the session has ended, or the link is wrong")
        frames = streaming.viewer_stream(session, request, live.shutdown, metrics.viewers)
        return StreamingResponse(frames, media_type=streaming.MEDIA_TYPE, headers=streaming.HEADERS)

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
