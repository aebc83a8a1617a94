"""What every HTTP app of this server has, the single server's and the scale-out gateway's alike: the
checks on who may use it from a browser (server/origins.py) and the web page.
"""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server.config import Config
from server.origins import HostGuard, OriginGuard, allowed_hosts, is_loopback_name

REPO_ROOT = Path(__file__).resolve().parent.parent
FRONTEND_BUILD = REPO_ROOT / "frontend" / "build"
PLACEHOLDER_PAGE = Path(__file__).resolve().parent / "placeholder.html"


def guards(config: Config) -> list[Middleware]:
    """The middleware in front of every route, outermost first: the Host check, the Origin check, and
    CORS headers only for --allowed-origins (other sites' pages get none)."""
    loopback_only = is_loopback_name(config.host) and not config.allowed_hosts
    middleware = []
    if not loopback_only:  # a loopback server's OriginGuard answers loopback names only
        middleware.append(
            Middleware(HostGuard, allowed_hosts=allowed_hosts(config.allowed_hosts), www_redirect=False)
        )
    middleware.append(Middleware(OriginGuard, allowed_origins=config.allowed_origins, loopback_only=loopback_only))
    if config.allowed_origins:
        middleware.append(
            Middleware(CORSMiddleware, allow_origins=config.allowed_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
        )
    return middleware


def page_routes() -> list[BaseRoute]:
    """The web page, built (frontend/build), or a page saying how to build it."""
    if (FRONTEND_BUILD / "index.html").is_file():
        return [Mount("/", StaticFiles(directory=FRONTEND_BUILD, html=True), name="frontend")]
    placeholder = PLACEHOLDER_PAGE.read_text()

    async def index(request: object) -> HTMLResponse:
        return HTMLResponse(placeholder)

    return [Route("/", index, include_in_schema=False)]
