"""POST /api/process: one image in, one JPEG out (server/oneshot.py does the work)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server import oneshot
from server.routes.deps import Live


def router(openapi_body: dict[str, object]) -> APIRouter:
    """The route, documented with the pipeline's parameters as the form's fields."""
    router = APIRouter()

    @router.post("/api/process", response_class=Response, responses=oneshot.RESPONSES, openapi_extra=openapi_body)
    async def process(request: Request, live: Live) -> Response:
        """One image in (multipart: `file`, and the pipeline's parameters as fields), one JPEG out."""
        return Response(await live.one_shot.process(request, live.model_available), media_type="image/jpeg")

    return router
