"""WebRTC beside MJPEG (aiortc): a session's camera as a video track up, its output as a video track
down, and its parameters over a data channel, for networks where a JPEG a frame each way is too much.

A transport, not a second server: the peer belongs to a session its websocket opened (the offer
carries the session's stream token, which only the websocket's holder has), the camera's frames go
into the session's latest-wins slot (decoded by aiortc's decoder thread, turned into pixels by the
worker: no JPEG on the way), and the output track is one of the session's streams, so the ping-pong,
fair turns, batching, limits, outputs, health and metrics are the websocket's.

A peer has one of three roles:
- "page": the page's own connection (POST /api/webrtc/{user_id}, server/routes/live.py): camera up,
  output down (one of the session's streams, the owner's), and a data channel carrying the websocket
  protocol's parameter messages (a JSON object of parameters, merged into the session's) and the
  server's answers ({"status": "error"|"info"}). One a session: a new offer replaces the old (a reload).
- "whip": a WHIP client (OBS) as the session's camera (server/routes/whip.py): camera up only.
- "whep": a WHEP player watching the session (server/routes/whip.py): output down only, a viewer.

While a page or WHIP peer feeds the camera, the websocket is not asked for frames. The output track
sends each new output once, at the model's rate: `recv` waits for the next one. ICE: host candidates.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Callable, Literal

from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from pydantic import ValidationError

from pipelines import ParamsModel
from server.config import IceServer
from server.frames import Frame
from server.protocol import describe_validation_error, parse_json
from server.sessions import Session, SessionManager, Stream

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000  # RTP's video clock rate
MAX_SDP_CHARS = 65_536
CODECS = ("VP8", "H264")


class OfferError(ValueError):
    """An offer the server cannot answer; the message says why."""


class OutputTrack(MediaStreamTrack):
    """The session's output as video: each new output once, when the worker has made it."""

    kind = "video"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self._sent_seq = session.output.seq
        self._started = time.monotonic()

    async def recv(self) -> Any:
        from av import VideoFrame

        output = self.session.output
        while output.seq == self._sent_seq or output.pixels is None:
            if self.session.closed or self.readyState != "live":
                raise MediaStreamError
            await output.changed()
        self._sent_seq = output.seq
        frame = VideoFrame.from_ndarray(output.pixels, format="rgb24")
        frame.pts = int((time.monotonic() - self._started) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


Role = Literal["page", "whip", "whep"]


class Peer:
    """One WebRTC connection of a session, in one of the roles above."""

    def __init__(self, role: Role, session: Session, sessions: SessionManager, params_type: type[ParamsModel],
                 max_frame_pixels: int, on_close: Callable[[Peer], None], ice_servers: Sequence[IceServer] = ()) -> None:
        self.id = uuid.uuid4().hex  # the WHIP/WHEP resource's name
        self.role = role
        self.session = session
        self.on_close = on_close
        self.sessions = sessions
        self.params_type = params_type
        self.max_frame_pixels = max_frame_pixels
        self.pc = RTCPeerConnection(RTCConfiguration([RTCIceServer(s.urls, s.username, s.credential) for s in ice_servers]))
        self.stream: Stream | None = None
        self.viewing = False
        self.feeding = False
        self.new_source = False  # the page switched input: its next frame starts the stream afresh
        self.channel: Any = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: str) -> str:
        """The answer to the page's offer; OfferError for an offer that cannot be answered."""
        if len(sdp) > MAX_SDP_CHARS:
            raise OfferError(f"The offer is {len(sdp)} characters; the limit is {MAX_SDP_CHARS}")
        if not sdp.startswith("v=0"):
            raise OfferError("The offer is not SDP (it starts with v=0)")
        if "m=video" in sdp and not any(f" {codec}/90000" in sdp.upper() for codec in CODECS):
            raise OfferError(f"The offer's video codecs are not supported: offer {' or '.join(CODECS)}")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as error:  # aiortc raises ValueError, KeyError, IndexError... on malformed SDP
            raise OfferError(f"The offer is not a usable SDP offer ({type(error).__name__}: {str(error)[:200]})") from None
        video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise OfferError("The offer has no video: " + ("ask for the output as a video track" if self.role == "whep"
                                                            else "send the camera as a video track"))
        if self.role != "whip":
            self.pc.addTrack(OutputTrack(self.session))
        try:
            answer = await self.pc.createAnswer()
        except Exception as error:  # an offer aiortc took but cannot answer
            raise OfferError(f"The offer cannot be answered ({type(error).__name__}: {str(error)[:200]})") from None
        await self.pc.setLocalDescription(answer)
        if self.role == "whep":
            self.sessions.viewer_opened(self.session, pixels=True)  # TooManyStreams past --max-viewers
            self.viewing = True
        if self.role != "whep":  # before the stream opens: the websocket is not asked for a frame
            self.sessions.video_feed_started(self.session)
            self.feeding = True
        if self.role == "page":
            self.stream = self.sessions.stream_opened(self.session, owner=True, pixels=True)
        self._spawn(self._close_with_session())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.on_close(self)
        if self.stream is not None:
            self.sessions.stream_closed(self.session, self.stream)
        if self.viewing:
            self.sessions.viewer_closed(self.session, pixels=True)
        if self.feeding:
            self.sessions.video_feed_ended(self.session)
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self.pc.close()

    # --- aiortc's events ---

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self.role != "whep":
            self._spawn(self._read_camera(track))
        else:  # OBS sends its audio too: read and dropped, or aiortc would queue it without end
            self._spawn(self._drain(track))

    def _on_datachannel(self, channel: Any) -> None:
        if self.role == "page":  # only the session's own page changes its parameters
            self.channel = channel
            channel.on("message", self._on_message)

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    # --- what flows ---

    async def _read_camera(self, track: MediaStreamTrack) -> None:
        """Each decoded camera frame into the session's slot (latest wins)."""
        while not self.closed:
            try:
                video = await track.recv()
            except MediaStreamError:
                return
            if video.width * video.height > self.max_frame_pixels:
                self._tell({"status": "error", "message": f"Frame is {video.width}x{video.height}; the limit is "
                                                          f"{self.max_frame_pixels} pixels"})
                continue
            self.sessions.video_frame(self.session, Frame(
                self.session.params, None, new_source=self.new_source, video=video, image_prompt=self.session.image_prompt))
            self.new_source = False

    @staticmethod
    async def _drain(track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return

    def _on_message(self, message: str | bytes) -> None:
        """A parameter message, as the websocket's: a JSON object of parameters; or
        {"status": "new_source"}: the page switched input (camera, screen, file), as the websocket's
        `next_frame` says with `new_source`."""
        if not isinstance(message, str):
            self._tell({"status": "error", "message": "Expected a JSON text message; got binary data"})
            return
        try:
            values = parse_json(message)
            if not isinstance(values, dict):
                raise ValueError("Parameters must be a JSON object")
            if "status" in values:
                if values != {"status": "new_source"}:
                    raise ValueError(f"Unknown status {str(values['status'])[:64]!r}: the channel takes parameters, or new_source")
                self.new_source = True
                return
            params = self.params_type.model_validate({**self.session.params.model_dump(), **values})
        except ValidationError as error:
            self._tell({"status": "error", "message": describe_validation_error(error)})
            return
        except ValueError as error:
            self._tell({"status": "error", "message": str(error)})
            return
        self.sessions.activity(self.session)
        self.sessions.params_changed(self.session, params)

    def _tell(self, message: dict[str, Any]) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(message))

    async def _close_with_session(self) -> None:
        await self.session.ended.wait()
        await self.close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
