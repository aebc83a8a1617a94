"""Sessions: one per connected user, each with a latest-wins frame slot, and the manager that admits
them and hands their frames to the worker, in turn. A one-shot job (POST /api/process) is a frame with
a reply: it takes its turn in the same order, but it is not a session.

Threads: the event loop opens, feeds and closes sessions and jobs; the worker thread takes their
frames. What the two share (the slots, the in-flight flags, the stream counts, the turn order) is
guarded by the manager's lock. Everything else on a Session belongs to the event loop.

Bounds: a session keeps at most one frame, as the client sent it (compressed; the worker decodes
the one it takes), at most `MAX_STREAMS_PER_SESSION` streams and `max_viewers` viewers, and
`OUTBOX_SIZE` control messages for a client that is slow to read them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from pipelines import ParamsModel
from server.metrics import Metrics
from server.streaming import OutputSlot

if TYPE_CHECKING:
    import numpy as np

    from server.outputs import Output

log = logging.getLogger(__name__)

OUTBOX_SIZE = 32  # control messages waiting for a slow client; past this the client is dropped
MAX_STREAMS_PER_SESSION = 4  # the page, a pop-out, a reload overlapping the old page, one more
# Frames whose header was fine but whose data the worker could not decode, with no good frame between
# them: the client is broken or hostile (each costs a round trip of messages, and no model time).
MAX_DAMAGED_FRAMES_IN_A_ROW = 100

ErrorKind = Literal["input", "model", "deadline"]


class ServerFull(Exception):
    pass


class AlreadyConnected(Exception):
    pass


class TooManyStreams(Exception):
    """A session (or the server) has as many streams open as it allows; the message says which."""


def canonical_user_id(user_id: str) -> str | None:
    """The one spelling of a user id (a UUID: lower case, with dashes), or None when it is no UUID.
    Upper case, braces, `urn:uuid:` and a missing dash all name the same user."""
    try:
        return str(uuid.UUID(user_id))
    except ValueError:
        return None


@dataclass
class Frame:
    params: ParamsModel
    data: bytes | None  # the image as the client sent it (JPEG, or PNG for one-shot jobs); None for text pipelines
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Result:
    """What the worker made of a frame: an encoded JPEG (and its pixels, for the outputs), or an error."""

    frame: Frame
    started_at: float
    finished_at: float
    jpeg: bytes | None = None
    pixels: np.ndarray | None = None  # the same frame as RGB pixels (read-only), for the outputs
    error: str | None = None
    error_kind: ErrorKind = "model"
    reused: bool = False  # the similarity filter re-sent the previous output


@dataclass
class SessionStats:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # replaced in the slot before the worker took them, or sent with no stream open
    errors: int = 0


class Session:
    def __init__(self, session_id: str, params: ParamsModel, manager: SessionManager) -> None:
        self.id = session_id
        self.short_id = session_id[:8]  # what logs show: never the whole id
        self.params = params
        self.viewer_token = secrets.token_urlsafe(18)  # read-only viewer link (/api/view/{token}); not the id
        self.created_at = self.last_activity_at = time.monotonic()
        self.stats = SessionStats()
        self._manager = manager
        # Shared with the worker, under the manager's lock:
        self.pending: Frame | None = None
        self.in_flight = False
        self.streams = 0  # open /api/stream responses
        self.closed = False
        # Event loop only:
        self.viewers = 0  # open /api/view responses
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_SIZE)
        self.ended = asyncio.Event()  # set when the session ends, whoever ends it
        self.output = OutputSlot()
        self.frame_requested = False
        self.damaged_frames_in_a_row = 0
        self.outputs: list[Output] = []  # NDI, Syphon: started with the first stream, stopped on close
        self.outputs_started = False

    @property
    def streaming(self) -> bool:
        return self.streams > 0

    def ready(self) -> bool:
        """A frame is waiting and someone watches its output (under the manager's lock)."""
        return self.pending is not None and self.streams > 0 and not self.closed

    def send(self, message: dict[str, Any]) -> None:
        """Queue a control message for the client; a client that stops reading is disconnected."""
        if self.closed:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            # The connection's reader sees `closed` and ends the session.
            log.warning("session %s: client is not reading its messages; closing", self.short_id)
            self.closed = True
            self.ended.set()

    def send_error(self, message: str) -> None:
        self.stats.errors += 1
        self.send({"status": "error", "message": message})

    def request_frame_if_idle(self) -> None:
        """Ask the client for its next frame once nothing of it is waiting or being generated and a
        stream shows the output (ping-pong: one frame in flight)."""
        if self.closed or self.frame_requested or not self._manager.is_idle(self):
            return
        self.frame_requested = True
        self.send({"status": "send_frame"})

    def deliver(self, result: Result) -> None:
        """A frame of this session has been generated (or failed): publish it, ask for the next.
        Called on the event loop."""
        if self.closed:
            return
        self._manager.metrics.frame_done("live", result)
        if result.jpeg is not None:
            self.stats.frames_out += 1
            self.damaged_frames_in_a_row = 0
            self.output.publish(result.jpeg)  # the MJPEG streams and viewers
            for output in self.outputs:  # NDI, Syphon: each takes the pixels on its own thread
                output.send(result.pixels)
        else:
            self.send_error(result.error or "Model error")
            if result.error_kind == "input":
                self.damaged_frames_in_a_row += 1
                if self.damaged_frames_in_a_row >= MAX_DAMAGED_FRAMES_IN_A_ROW:
                    log.info("session %s: %d damaged frames in a row; closing", self.short_id, self.damaged_frames_in_a_row)
                    self.send({"status": "error", "message": f"{MAX_DAMAGED_FRAMES_IN_A_ROW} damaged frames in a row: closing"})
                    self.ended.set()  # the conversation sends what is queued, then closes
                    return
        self.request_frame_if_idle()


class Job:
    """A one-shot job (POST /api/process): one frame, and the future its request awaits."""

    def __init__(self, frame: Frame, reply: asyncio.Future[Result], metrics: Metrics) -> None:
        self.short_id = "one-shot"
        self.pending: Frame | None = frame
        self.in_flight = False
        self.reply = reply
        self._metrics = metrics

    def ready(self) -> bool:
        return self.pending is not None

    def deliver(self, result: Result) -> None:
        self._metrics.frame_done("process", result)
        if not self.reply.done():
            self.reply.set_result(result)


Source = Session | Job  # what the worker takes frames from and delivers results to


class SessionManager:
    def __init__(
        self,
        max_users: int,
        *,
        max_viewers: int = 8,
        outputs: Callable[[], list[Output]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.max_users = max_users
        self.max_viewers = max_viewers
        self.make_outputs = outputs or list
        self.metrics = metrics or Metrics()
        self.metrics.count_sessions(lambda: len(self._sessions))
        self._sessions: dict[str, Session] = {}
        self._viewers: dict[str, Session] = {}  # viewer token -> session
        self._turns: list[Source] = []  # the order the worker serves sessions and jobs in
        self._cond = threading.Condition()
        self._opened = asyncio.Event()  # set (and replaced) whenever a session opens: event loop only

    # --- event loop side ---

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        """The session of a user id in any spelling of its UUID."""
        canonical = canonical_user_id(session_id)
        return self._sessions.get(canonical) if canonical else None

    def get_by_viewer_token(self, token: str) -> Session | None:
        return self._viewers.get(token)

    def open(self, session_id: str, params: ParamsModel) -> Session:
        """A new session for a canonical user id (see `canonical_user_id`)."""
        with self._cond:
            if session_id in self._sessions:
                raise AlreadyConnected(session_id)
            if self.max_users and len(self._sessions) >= self.max_users:
                raise ServerFull()
            session = Session(session_id, params, self)
            session.outputs = self.make_outputs()
            self._sessions[session_id] = session
            self._viewers[session.viewer_token] = session
            self._turns.append(session)
        self._opened.set()
        self._opened = asyncio.Event()
        return session

    async def wait_for(self, session_id: str, timeout: float) -> Session | None:
        """The session of a user id, waiting up to `timeout` seconds for its websocket to connect: a
        page may open its stream and its websocket at once, in either order."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (session := self.get(session_id)) is None and canonical_user_id(session_id) is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._opened.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return session

    def close(self, session: Session) -> None:
        with self._cond:
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]
                del self._viewers[session.viewer_token]  # the viewer link dies with the session
            if session in self._turns:
                self._turns.remove(session)
            session.closed = True
            session.pending = None
            self._cond.notify_all()
        session.ended.set()
        for output in session.outputs:
            output.stop()
        session.output.notify()

    def submit(self, job: Job) -> None:
        """A one-shot job joins the back of the turn order."""
        with self._cond:
            self._turns.append(job)
            self._cond.notify_all()
        self.metrics.frames_in_by_source["process"].inc()

    def cancel(self, job: Job) -> None:
        """A job whose request gave up: never taken if still waiting."""
        with self._cond:
            job.pending = None
            if job in self._turns:
                self._turns.remove(job)

    def offer(self, session: Session, frame: Frame) -> None:
        """Put a frame in the session's slot; a frame still waiting there is replaced (latest wins).
        With no stream open the frame is not kept: nobody would see it, and opening a stream asks
        the client for a fresh one."""
        with self._cond:
            if session.closed:
                return
            session.stats.frames_in += 1
            self.metrics.frames_in_by_source["live"].inc()
            if session.pending is not None or not session.streaming:
                session.stats.frames_dropped += 1
                self.metrics.input_frames_dropped.inc()
            session.pending = frame if session.streaming else None
            self._cond.notify_all()

    def open_stream(self, session: Session) -> None:
        """A stream of the session's output opens; every open stream gets every frame."""
        with self._cond:
            if session.streams >= MAX_STREAMS_PER_SESSION:
                raise TooManyStreams(
                    f"This session has {session.streams} streams open; the limit is {MAX_STREAMS_PER_SESSION}"
                )
            session.streams += 1
            self._cond.notify_all()
        if not session.outputs_started and not session.closed:
            session.outputs_started = True  # the outputs live from the first stream to the session's end
            for output in session.outputs:
                output.start(session.id)

    def close_stream(self, session: Session) -> None:
        with self._cond:
            session.streams -= 1
            if not session.streaming:
                session.pending = None  # nobody watches: not kept (see offer)
                session.frame_requested = False

    def open_viewer(self, session: Session) -> None:
        if session.viewers >= self.max_viewers:
            raise TooManyStreams(f"This session has {session.viewers} viewers; the limit is {self.max_viewers}")
        session.viewers += 1

    def close_viewer(self, session: Session) -> None:
        session.viewers -= 1

    def is_idle(self, session: Session) -> bool:
        """Someone watches, and nothing is waiting or being generated: time to ask for a frame."""
        with self._cond:
            return session.streaming and session.pending is None and not session.in_flight

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def counts(self) -> tuple[int, int]:
        """(streams, viewers) open now, over all sessions."""
        sessions = self.all()
        return sum(s.streams for s in sessions), sum(s.viewers for s in sessions)

    # --- worker side ---

    def take(
        self,
        timeout: float,
        max_batch: int = 1,
        key: Callable[[ParamsModel], Any] | None = None,
        batch_wait: float = 0.0,
    ) -> list[tuple[Source, Frame]]:
        """The next ready frames, sources served in turn: the first ready one's frame, plus up to
        `max_batch - 1` frames of other ready sessions whose `key(params)` is the same (they can run
        as one batch). When other streaming sessions' frames are on their way, wait up to
        `batch_wait` seconds for them: without it, users in ping-pong fall into taking turns and never
        share a batch. Empty when nothing came within `timeout`.

        What was ready may close while this waits: the batch is chosen afresh after every wait."""
        deadline = time.monotonic() + timeout
        batch_deadline = None
        with self._cond:
            while True:
                ready = [source for source in self._turns if source.ready()]
                now = time.monotonic()
                if ready:
                    if batch_deadline is None:
                        batch_deadline = now + batch_wait
                    chosen = self._batch(ready, max_batch, key)
                    coming = [
                        s for s in self._turns
                        if isinstance(s, Session) and s.streaming and s.pending is None and not s.in_flight
                    ]
                    if len(chosen) == max_batch or not coming or now >= batch_deadline:
                        return [self._hand_out(source) for source in chosen]
                    self._cond.wait(batch_deadline - now)
                elif now >= deadline:
                    return []
                else:
                    self._cond.wait(deadline - now)

    @staticmethod
    def _batch(ready: list[Source], max_batch: int, key: Callable[[ParamsModel], Any] | None) -> list[Source]:
        first = ready[0]
        if max_batch == 1 or key is None or not isinstance(first, Session):
            return [first]
        first_key = key(first.pending.params)  # type: ignore[union-attr]
        others = [s for s in ready[1:] if isinstance(s, Session) and key(s.pending.params) == first_key]  # type: ignore[union-attr]
        return [first, *others[: max_batch - 1]]

    def _hand_out(self, source: Source) -> tuple[Source, Frame]:
        """Give the source's frame to the worker; a session goes to the back of the turn order, a job
        leaves it."""
        frame, source.pending = source.pending, None
        assert frame is not None
        source.in_flight = True
        self._turns.remove(source)
        if isinstance(source, Session):
            self._turns.append(source)
        return source, frame

    def finish(self, source: Source) -> None:
        """The worker is done with the source's frame (or gave up on it)."""
        with self._cond:
            source.in_flight = False

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
