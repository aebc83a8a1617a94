"""GET /api/health: whether frames are being served, and what is true of the server now. The same
typed answer comes from the single server and from the scale-out gateway (which adds its replicas).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, Field

from server.live import LiveServer

Status = Literal["ok", "starting", "stalled", "restarting", "degraded", "shutting down"]


class WorkerHealth(BaseModel):
    alive: bool = Field(description="The inference thread runs")
    busy_s: float | None = Field(description="Seconds the model call in progress has taken so far; null when idle")
    stalled: bool = Field(description="A model call has outlived --frame-deadline and not yet returned")
    restarts: int = Field(description="Inference threads started after one ended")
    frame_deadline_s: float


class ReplicaHealth(BaseModel):
    """One engine replica, as the scale-out gateway sees it."""

    id: int
    alive: bool = Field(description="The replica answers")
    status: str = Field(description="Its own health status; 'unknown' when it does not answer")
    users: int
    pid: int | None = Field(description="Its process id")


class HealthResponse(BaseModel):
    status: Status = Field(
        description="ok: frames are being served (HTTP 200); degraded (scale-out): some replicas serve (HTTP 200); "
        "anything else comes with HTTP 503"
    )
    model_loaded: bool = Field(description="The inference thread holds the loaded pipeline")
    pipeline: str
    model: str
    device: str
    dtype: str
    users: int
    max_users: int
    streams: int = Field(description="Open /api/stream responses and the pages' WebRTC output tracks")
    viewers: int = Field(description="Open /api/view responses and WHEP players")
    webrtc: int = Field(0, description="WebRTC connections open: pages, WHIP cameras, WHEP players")
    frames_generated: int
    frames_reused: int
    batches: int
    temporal_memory_mb: float = Field(0.0, description="What the sessions' temporal-consistency memories hold")
    temporal_memory_budget_mb: float = Field(0.0, description="What they may hold together (--temporal-memory-mb)")
    worker: WorkerHealth | None = Field(description="The inference thread; null while starting (and behind the gateway)")
    headless: list[dict[str, Any]] = Field(
        [], description="--session sessions (no page): session, input, input_connected, frames_in"
    )
    replicas: list[ReplicaHealth] | None = Field(None, description="Scale-out only: each engine replica")

    @property
    def serving(self) -> bool:
        return self.status in ("ok", "degraded")


def health_of(live: LiveServer) -> HealthResponse:
    worker = live.worker
    state = worker.state() if worker is not None else None
    status: Status
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
    streams, viewers = live.sessions.counts()
    return HealthResponse(
        status=status,
        model_loaded=worker is not None and worker.pipeline is not None,
        pipeline=live.info.name,
        model=live.model_name,
        device=live.loaded.device,
        dtype=live.loaded.dtype,
        users=len(live.sessions),
        max_users=live.config.max_users,
        streams=streams,
        viewers=viewers,
        webrtc=len(live.peers),
        frames_generated=worker.frames_done if worker else 0,
        frames_reused=worker.frames_reused if worker else 0,
        batches=worker.batches if worker else 0,
        temporal_memory_mb=round(worker.memories.held / 2**20, 3) if worker and worker.memories else 0.0,
        temporal_memory_budget_mb=round(live.loaded.temporal_budget / 2**20, 3),
        worker=WorkerHealth(**asdict(state), frame_deadline_s=live.config.frame_deadline) if state else None,
        headless=[h.health() for h in live.headless],
    )
