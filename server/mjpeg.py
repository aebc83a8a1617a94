"""The MJPEG framing (multipart/x-mixed-replace) and a session's latest output, framed once for all of
its streams. The bytes are the multipart stream that the clients of Real-Time-Latent-Consistency-Model
read.

Each part is followed at once by the next boundary: Chromium shows a part only when it sees the
boundary after it, so this shows every frame on arrival without sending it twice.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BOUNDARY = "frame"
MEDIA_TYPE = f"multipart/x-mixed-replace;boundary={BOUNDARY}"
HEADERS = {"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"}
FIRST_BOUNDARY = f"--{BOUNDARY}\r\n".encode()


def mjpeg_part(jpeg: bytes) -> bytes:
    header = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return b"".join((header, jpeg, b"\r\n", FIRST_BOUNDARY))


class OutputSlot:
    """The latest output of a session, framed once as an MJPEG part for all its streams (and its RGB
    pixels, for its WebRTC track), and a way to wait for the next one (event loop only)."""

    def __init__(self) -> None:
        self.part: bytes | None = None
        self.pixels: np.ndarray | None = None
        self.seq = 0
        self._changed = asyncio.Event()

    def publish(self, jpeg: bytes | None, pixels: np.ndarray | None = None) -> None:
        """A new output: its JPEG when an MJPEG stream or viewer reads it, its pixels when a track does."""
        self.part = mjpeg_part(jpeg) if jpeg is not None else None
        self.pixels = pixels
        self.seq += 1
        self.notify()

    def notify(self) -> None:
        """Wake every waiter (new frame, session closed, a stream ended)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()
