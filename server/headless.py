"""Sessions with no page (--session ndi:NAME): started at launch, each with an NDI source as its camera
(server/ndi_input.py) and its output wherever --ndi and --syphon send every session's. OBS -> Live
Diffusion -> OBS with no browser at all, steered over OSC (--osc-port), listed in /api/health.

Such a session is an ordinary session to the rest of the server (turns, batching, outputs, OSC,
viewer links): it holds one stream of its own, so its frames are made, and nobody reads its control
messages (they are dropped as they come). It lives until the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from server.frames import Frame
from server.ndi_input import NdiInput, PixelFrame
from server.sessions import Session, SessionManager

log = logging.getLogger(__name__)


@dataclass
class HeadlessSession:
    session: Session
    input_name: str
    input: NdiInput
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def health(self) -> dict[str, Any]:
        return {"session": self.session.short_id, "input": f"ndi:{self.input_name}",
                "input_connected": self.input.connected, "frames_in": self.input.frames}


def start(spec: str, params: Any, sessions: SessionManager, max_frame_pixels: int) -> HeadlessSession:
    """A session fed by the input `spec` (ndi:NAME), streaming from now on."""
    loop = asyncio.get_running_loop()
    session = sessions.open(str(uuid.uuid4()), params)
    sessions.video_feed_started(session)  # no websocket to ask for frames: the input feeds it
    sessions.stream_opened(session, owner=True, pixels=True)  # its frames are made: for the outputs

    def on_frame(frame: PixelFrame) -> None:  # the input's thread
        loop.call_soon_threadsafe(
            lambda: sessions.video_frame(session, Frame(session.params, None, video=frame, image_prompt=session.image_prompt))
        )

    name = spec.partition(":")[2]
    headless = HeadlessSession(session, name, NdiInput(name, on_frame, max_frame_pixels))
    headless.tasks.append(asyncio.create_task(_drop_messages(sessions, session)))
    headless.input.start()
    log.info("session %s: no page; its camera is the NDI source %r", session.short_id, name)
    # The operator's way to watch it: a viewer link, which the log would cut short (server/logs.py).
    print(f"Session with no page {session.short_id} (NDI {name!r}): watch it at /api/view/{session.viewer_token}",
          file=sys.stderr, flush=True)
    return headless


async def stop(headless: HeadlessSession, sessions: SessionManager) -> None:
    sessions.end(headless.session)
    await asyncio.to_thread(headless.input.stop)
    for task in headless.tasks:
        task.cancel()


async def _drop_messages(sessions: SessionManager, session: Session) -> None:
    """Nobody reads a headless session's control messages; errors are worth a log line."""
    while (message := await sessions.next_message(session)) is not None:
        if message.get("status") == "error":
            log.info("session %s: %s", session.short_id, str(message.get("message"))[:200])
