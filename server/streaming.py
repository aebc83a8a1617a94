"""The MJPEG stream of a session: multipart/x-mixed-replace, one part per generated frame, to its owner
and to any number of read-only viewers. Every stream of a session sends the same JPEG bytes, encoded
once by the worker: watching costs no inference and no encoding.

Each part is followed at once by the next boundary: Chromium shows a part only when it sees the
boundary after it, so this shows every frame on arrival without sending it twice. The bytes are the
same multipart stream the anchor's clients read.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from prometheus_client import Gauge
from starlette.requests import Request

from server.sessions import Session, SessionManager

BOUNDARY = "frame"
MEDIA_TYPE = f"multipart/x-mixed-replace;boundary={BOUNDARY}"
HEADERS = {"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"}
DISCONNECT_POLL_S = 1.0


def mjpeg_part(jpeg: bytes) -> bytes:
    header = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return header + jpeg + f"\r\n--{BOUNDARY}\r\n".encode()


async def mjpeg_stream(
    session: Session,
    sessions: SessionManager,
    request: Request,
    shutdown: asyncio.Event,
    on_start: Callable[[], None],
) -> AsyncIterator[bytes]:
    """Frames of `session` until it closes, a newer stream request replaces this one, or shutdown."""
    session.stream_token += 1
    token = session.stream_token
    session.output.notify()  # an older stream of this session sees it is replaced and ends
    sessions.set_streaming(session, True)
    on_start()
    try:
        async for part in _parts(session, request, shutdown, lambda: session.stream_token == token):
            yield part
    finally:
        if session.stream_token == token:
            sessions.set_streaming(session, False)


async def viewer_stream(
    session: Session, request: Request, shutdown: asyncio.Event, viewers: Gauge
) -> AsyncIterator[bytes]:
    """The frames of `session` for a read-only viewer, until the session ends: the newest frame at once,
    then each new one. A viewer neither replaces the owner's stream nor asks for frames."""
    with viewers.track_inprogress():
        async for part in _parts(session, request, shutdown, lambda: True):
            yield part


async def _parts(
    session: Session, request: Request, shutdown: asyncio.Event, current: Callable[[], bool]
) -> AsyncIterator[bytes]:
    sent_seq = 0
    yield f"--{BOUNDARY}\r\n".encode()
    while not (session.closed or shutdown.is_set()) and current():
        if session.output.seq != sent_seq and session.output.jpeg is not None:
            sent_seq = session.output.seq
            yield mjpeg_part(session.output.jpeg)
            continue
        await session.output.wait(DISCONNECT_POLL_S)
        if await request.is_disconnected():
            break
