"""The MJPEG streams of a session: multipart/x-mixed-replace, one part per generated frame, to its owner
and to read-only viewers. Every stream of a session sends the same JPEG bytes, encoded once by the
worker: watching costs no inference and no encoding.

A session may have a few streams open (the page, its pop-out, a reload overlapping the old page):
each gets every frame, so whoever else opens or closes a stream of the session, the owner's keeps
going. Past the bounds (`sessions.MAX_STREAMS_PER_SESSION`, `--max-viewers`) a new stream is refused.

Each part is followed at once by the next boundary: Chromium shows a part only when it sees the
boundary after it, so this shows every frame on arrival without sending it twice. The bytes are the
same multipart stream that the clients of Real-Time-Latent-Consistency-Model read.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator, Callable

from prometheus_client import Gauge
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from server.sessions import Session, SessionManager

BOUNDARY = "frame"
MEDIA_TYPE = f"multipart/x-mixed-replace;boundary={BOUNDARY}"
HEADERS = {"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"}
FIRST_BOUNDARY = f"--{BOUNDARY}\r\n".encode()


def mjpeg_part(jpeg: bytes) -> bytes:
    header = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return b"".join((header, jpeg, b"\r\n", FIRST_BOUNDARY))


class OutputSlot:
    """The latest output of a session, framed once as an MJPEG part for all its streams, and a way to
    wait for the next one (event loop only)."""

    def __init__(self) -> None:
        self.part: bytes | None = None
        self.seq = 0
        self._changed = asyncio.Event()

    def publish(self, jpeg: bytes) -> None:
        self.part = mjpeg_part(jpeg)
        self.seq += 1
        self.notify()

    def notify(self) -> None:
        """Wake every waiter (new frame, session closed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


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


def session_stream(session: Session, sessions: SessionManager) -> MjpegResponse:
    """The owner's stream of `session`: frames until the session closes, the client leaves, or
    shutdown. Opening it asks the client for a frame; `TooManyStreams` past the bound."""
    sessions.open_stream(session)
    session.request_frame_if_idle()
    return MjpegResponse(_parts(session), lambda: sessions.close_stream(session))


def viewer_stream(session: Session, sessions: SessionManager, viewers: Gauge) -> MjpegResponse:
    """The frames of `session` for a read-only viewer, until the session ends: the newest frame at once,
    then each new one. A viewer does not ask for frames; `TooManyStreams` past the bound."""
    sessions.open_viewer(session)
    viewers.inc()

    def close() -> None:
        viewers.dec()
        sessions.close_viewer(session)

    return MjpegResponse(_parts(session), close)


async def _parts(session: Session) -> AsyncIterator[bytes]:
    """The session's frames as they come, until it closes (which shutdown does). A client that leaves
    ends the response: Starlette cancels it."""
    sent_seq = 0
    yield FIRST_BOUNDARY
    while not session.closed:
        output = session.output
        if output.seq != sent_seq and output.part is not None:
            sent_seq = output.seq
            yield output.part
        else:
            await output.changed()
