"""The MJPEG streams of a session: multipart/x-mixed-replace, one part per generated frame, to its owner
and to read-only viewers. Every stream of a session sends the same JPEG bytes, encoded once by the
worker: watching costs no inference and no encoding.

A session may have a few streams open (the page, its pop-out, a reload overlapping the old page):
each gets every frame, so whoever else opens or closes a stream of the session, the owner's keeps
going. Past the bounds (`sessions.MAX_STREAMS_PER_SESSION`, `--max-viewers`) a new stream is refused.

Each part is followed at once by the next boundary: Chromium shows a part only when it sees the
boundary after it, so this shows every frame on arrival without sending it twice. The bytes are the
same multipart stream the anchor's clients read.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from prometheus_client import Gauge
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.sessions import Session, SessionManager

BOUNDARY = "frame"
MEDIA_TYPE = f"multipart/x-mixed-replace;boundary={BOUNDARY}"
HEADERS = {"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"}
DISCONNECT_POLL_S = 1.0


def mjpeg_part(jpeg: bytes) -> bytes:
    header = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return header + jpeg + f"\r\n--{BOUNDARY}\r\n".encode()


class MjpegResponse(StreamingResponse):
    """A multipart MJPEG response that calls `on_close` exactly once, however it ends: the client
    leaves, the session ends, or the response never starts."""

    def __init__(self, parts: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(parts, media_type=MEDIA_TYPE, headers=HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def session_stream(
    session: Session, sessions: SessionManager, request: Request, shutdown: asyncio.Event
) -> MjpegResponse:
    """The owner's stream of `session`: frames until the session closes, the client leaves, or
    shutdown. Opening it asks the client for a frame; `TooManyStreams` past the bound."""
    sessions.open_stream(session)
    session.request_frame_if_idle()
    return MjpegResponse(_parts(session, request, shutdown), lambda: sessions.close_stream(session))


def viewer_stream(
    session: Session, sessions: SessionManager, request: Request, shutdown: asyncio.Event, viewers: Gauge
) -> MjpegResponse:
    """The frames of `session` for a read-only viewer, until the session ends: the newest frame at once,
    then each new one. A viewer does not ask for frames; `TooManyStreams` past the bound."""
    sessions.open_viewer(session)
    viewers.inc()

    def close() -> None:
        viewers.dec()
        sessions.close_viewer(session)

    return MjpegResponse(_parts(session, request, shutdown), close)


async def _parts(session: Session, request: Request, shutdown: asyncio.Event) -> AsyncIterator[bytes]:
    sent_seq = 0
    yield f"--{BOUNDARY}\r\n".encode()
    while not (session.closed or shutdown.is_set()):
        if session.output.seq != sent_seq and session.output.jpeg is not None:
            sent_seq = session.output.seq
            yield mjpeg_part(session.output.jpeg)
            continue
        await session.output.wait(DISCONNECT_POLL_S)
        if await request.is_disconnected():
            break
