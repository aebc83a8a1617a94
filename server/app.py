"""create_app(config, loaded pipeline) -> FastAPI: the app of one server, put together from its shared
state (server/live.py), its routers (server/routes/) and the guards and page every app here has
(server/web.py)."""

from __future__ import annotations

from fastapi import FastAPI

from server import oneshot
from server.config import Config
from server.engine import LoadedPipeline
from server.live import LiveServer
from server.routes import live, process, status, whip
from server.web import guards, page_routes


def create_app(config: Config, loaded: LoadedPipeline) -> FastAPI:
    state = LiveServer.build(config, loaded)
    info = state.info
    app = FastAPI(
        title="Live Diffusion", summary=f"{info.title}: {info.description}", lifespan=state.lifespan,
        middleware=guards(config),
    )
    app.state.live = state
    app.include_router(live.router)
    app.include_router(whip.router)
    app.include_router(status.router)
    app.include_router(process.router(oneshot.openapi_body(loaded.pipeline.InputParams, info.input_mode)))
    app.router.routes.extend(page_routes())
    return app
