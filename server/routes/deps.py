"""The one dependency every route has: the `LiveServer` of the app it belongs to."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from server.live import LiveServer


def live_server(connection: HTTPConnection) -> LiveServer:
    live: LiveServer = connection.app.state.live
    return live


Live = Annotated[LiveServer, Depends(live_server)]
