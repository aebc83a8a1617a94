"""`LiveServer`: what the routes of one app share (the sessions, the worker, the one-shot API, the
metrics), built once per app by `create_app`, never a module global. Its lifespan runs the inference
thread; `begin_shutdown` ends every session (Ctrl-C).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, AsyncIterator

import markdown2
from pydantic import BaseModel

from pipelines import PipelineInfo
from server.config import Config, parse_ice_server
from server.engine import LoadedPipeline
from server.metrics import Metrics
from server.oneshot import OneShot
from server.outputs import Outputs
from server.sessions import Session, SessionManager
from server.worker import SimilarityFilter, Worker

if TYPE_CHECKING:
    from server.headless import HeadlessSession
    from server.osc import OscReceiver
    from server.webrtc import Peer, Role

OUTPUTS_CLOSE_S = 2.0  # at shutdown: how long the outputs get to remove their NDI sources, Syphon servers
SHUTTING_DOWN = {"status": "timeout", "message": "Server is shutting down"}


class SettingsResponse(BaseModel):
    info: dict[str, Any]
    input_params: dict[str, Any]
    max_queue_size: int
    page_content: str
    # How the page may reach its session, preferred first: "webrtc" (POST /api/webrtc/{user_id},
    # server/webrtc.py), then "mjpeg" (JPEG frames over the websocket, /api/stream back).
    transports: list[str]
    # --ice-servers, for the page's RTCPeerConnection: [{"urls", "username", "credential"}]
    ice_servers: list[dict[str, str]] = []


def settings_response(
    info_type: type[PipelineInfo], params_type: type[BaseModel], max_users: int, ice_servers: Sequence[str] = ()
) -> SettingsResponse:
    """GET /api/settings: what the page builds its controls from (also written to the web page's test
    fixtures by scripts/settings_fixtures.py)."""
    info = info_type()
    return SettingsResponse(
        info=info_type.model_json_schema(),
        input_params=params_type.model_json_schema(),
        max_queue_size=max_users,
        page_content=markdown2.markdown(info.page_content) if info.page_content else "",
        # A text pipeline's page sends no camera: its frames come from its parameters, over the websocket.
        transports=["webrtc", "mjpeg"] if info.input_mode == "image" else ["mjpeg"],
        ice_servers=[
            {key: value for key, value in vars(parse_ice_server(url)).items() if value is not None} for url in ice_servers
        ],
    )


@dataclass
class LiveServer:
    config: Config
    loaded: LoadedPipeline
    info: PipelineInfo
    metrics: Metrics
    outputs: Outputs
    sessions: SessionManager
    one_shot: OneShot
    settings: SettingsResponse
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    worker: Worker | None = None
    loop: asyncio.AbstractEventLoop | None = None
    conversations: set[asyncio.Task[Any]] = field(default_factory=set)  # websocket conversations running
    peers: dict[str, Peer] = field(default_factory=dict)  # the WebRTC connections (server/webrtc.py), by id
    osc: OscReceiver | None = None  # the OSC endpoint (server/osc.py), with --osc-port
    headless: list[HeadlessSession] = field(default_factory=list)  # --session: sessions with no page

    @classmethod
    def build(cls, config: Config, loaded: LoadedPipeline) -> LiveServer:
        metrics = Metrics()
        outputs = Outputs(config, metrics)  # raises OutputUnavailable when one cannot run here
        sessions = SessionManager(
            config.max_users, max_viewers=config.max_viewers, outputs=outputs.for_session, metrics=metrics
        )
        info = loaded.module.Info()
        params_type = loaded.pipeline.InputParams
        shutdown = asyncio.Event()
        one_shot = OneShot(
            sessions, params_type, info.input_mode,
            max_requests=config.max_process_requests, max_frame_bytes=config.max_frame_bytes,
            max_frame_pixels=config.max_frame_pixels, upload_timeout=config.upload_timeout,
            process_timeout=config.process_timeout, shutdown=shutdown,
        )
        settings = settings_response(loaded.module.Info, params_type, config.max_users, config.ice_servers)
        return cls(config, loaded, info, metrics, outputs, sessions, one_shot, settings, shutdown)

    @property
    def model_name(self) -> str:
        if self.config.tiny:
            return "tiny"
        return self.config.model_id or getattr(self.loaded.module, "MODEL_ID", "")

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """The inference thread and its supervisor, from start-up to shutdown."""
        config = self.config
        self.loop = asyncio.get_running_loop()
        self.worker = Worker(
            self.loaded.pipeline,
            self.sessions,
            self.loop,
            jpeg_quality=config.jpeg_quality,
            max_frame_bytes=config.max_frame_bytes,
            max_frame_pixels=config.max_frame_pixels,
            frame_deadline=config.frame_deadline,
            safety_checker=self.loaded.safety_checker,
            max_batch=config.batch_size(self.loaded.device),
            batch_wait=config.batch_wait_ms / 1000,
            similarity_filter=(
                SimilarityFilter(config.similarity_threshold, config.max_skips) if config.similarity_filter else None
            ),
            temporal_budget=self.loaded.temporal_budget,
        )
        self.metrics.webrtc_connections.set_function(lambda: len(self.peers))
        memories = self.worker.memories
        self.metrics.count_temporal_memory(lambda: memories.held if memories else 0, self.loaded.temporal_budget)
        self.worker.start()
        supervisor = asyncio.create_task(self.worker.supervise_forever())
        osc_endpoint = None
        if config.osc_port:
            from server import osc

            osc_endpoint, self.osc = await osc.listen(config.host, config.osc_port, self.sessions, self.loaded.pipeline.InputParams)
        if config.session:
            from server import headless

            params = self.loaded.pipeline.InputParams.model_validate_json(config.session_params or "{}")
            self.headless = [headless.start(spec, params, self.sessions, config.max_frame_pixels) for spec in config.session]
        yield
        if osc_endpoint is not None:
            osc_endpoint.close()
        if self.headless:
            await asyncio.gather(*(headless.stop(h, self.sessions) for h in self.headless))
        self._end_all()
        await asyncio.gather(*(peer.close() for peer in list(self.peers.values())))
        self.worker.stop()
        supervisor.cancel()
        self.worker = None
        await asyncio.to_thread(self.outputs.join, OUTPUTS_CLOSE_S)

    async def open_peer(self, role: Role, session: Session, offer: str) -> Peer:
        """A WebRTC connection of `session` answering `offer` (server/webrtc.py); a page's or WHIP
        client's replaces the session's previous one of that role (a reload, OBS reconnecting).
        OfferError (and TooManyStreams for a viewer past the bound) when it cannot be made."""
        from server.webrtc import Peer

        if role != "whep":
            for previous in [p for p in self.peers.values() if p.session is session and p.role == role]:
                await previous.close()
        peer = Peer(role, session, self.sessions, self.loaded.pipeline.InputParams, self.config.max_frame_pixels,
                    on_close=lambda closed: self.peers.pop(closed.id, None),
                    ice_servers=[parse_ice_server(url) for url in self.config.ice_servers])
        self.peers[peer.id] = peer
        try:
            await peer.answer(offer)
        except BaseException:
            await peer.close()
            raise
        return peer

    def begin_shutdown(self) -> None:
        """End every session and stream now (Ctrl-C): safe to call from any thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._end_all)

    def _end_all(self) -> None:
        self.shutdown.set()
        for session in self.sessions.all():
            self.sessions.end(session, SHUTTING_DOWN)  # the conversation sends it, then the socket closes

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
