"""The MJPEG streams of a session (server/mjpeg.py frames them): to its owner and to read-only viewers.
Every stream of a session sends the same JPEG bytes, encoded once by the worker: watching costs no
inference and no encoding.

A session may have a few streams open (the page, a reload overlapping the old page, an OBS source):
each gets every frame. Past the bounds (`sessions.MAX_STREAMS_PER_SESSION`, `--max-viewers`) a new
stream is refused, except the owner's (opened with the stream token its websocket was given), which
takes the place of another.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.mjpeg import FIRST_BOUNDARY, HEADERS, MEDIA_TYPE
from server.sessions import Session, SessionManager, Stream


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


def session_stream(session: Session, sessions: SessionManager, *, owner: bool) -> MjpegResponse:
    """A stream of `session`'s frames until the session closes, the client leaves, shutdown, or (not
    the owner's) it makes room for one of the owner's. Opening it asks the client for a frame;
    `TooManyStreams` past the bound."""
    stream = sessions.stream_opened(session, owner=owner)
    return MjpegResponse(_parts(session, stream), lambda: sessions.stream_closed(session, stream))


def viewer_stream(session: Session, sessions: SessionManager) -> MjpegResponse:
    """The frames of `session` for a read-only viewer, until the session ends: the newest frame at once,
    then each new one. A viewer does not ask for frames; `TooManyStreams` past the bound."""
    sessions.viewer_opened(session)
    return MjpegResponse(_parts(session, None), lambda: sessions.viewer_closed(session))


async def _parts(session: Session, stream: Stream | None) -> AsyncIterator[bytes]:
    """The session's frames as they come, until it closes (which shutdown does) or the stream is ended.
    A client that leaves ends the response: Starlette cancels it."""
    sent_seq = 0
    yield FIRST_BOUNDARY
    while not session.closed and not (stream is not None and stream.ended):
        output = session.output
        if output.seq != sent_seq and output.part is not None:
            sent_seq = output.seq
            yield output.part
        else:
            await output.changed()
