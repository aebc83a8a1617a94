"""What the server says about itself: the pipeline's settings (the page builds its controls from
them), the number of users, health and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel

from server.health import HealthResponse, health_of
from server.live import SettingsResponse
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.routes.deps import Live

router = APIRouter()


class QueueResponse(BaseModel):
    queue_size: int


@router.get("/api/settings")
async def get_settings(live: Live) -> SettingsResponse:
    return live.settings


@router.get("/api/queue")
async def get_queue(live: Live) -> QueueResponse:
    return QueueResponse(queue_size=len(live.sessions))


@router.get("/api/health", responses={503: {"model": HealthResponse, "description": "Not serving frames now"}})
async def get_health(response: Response, live: Live) -> HealthResponse:
    """Whether frames are being served (200) or not (503), and what is true of the server now."""
    health = health_of(live)
    response.status_code = 200 if health.serving else 503
    return health


@router.get("/metrics", response_class=PlainTextResponse)
async def get_metrics(live: Live) -> Response:
    """Prometheus metrics: sessions, viewers, frames in, out and dropped, timings, errors by kind."""
    return Response(live.metrics.render(), media_type=METRICS_CONTENT_TYPE)
