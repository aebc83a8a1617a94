"""Sessions: one per connected user, each with a latest-wins frame slot, and the manager that admits
them and hands ready frames to the worker, fairly. One-shot jobs (POST /api/process) take their turn
in the same round-robin as pseudo-sessions.

Threads: the event loop opens, feeds and closes sessions; the worker thread takes frames. Everything
the two share (the slot, the in-flight flag, the session list) is guarded by the manager's lock.
Everything else on a Session belongs to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image

from pipelines.base import ParamsModel
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.outputs import Output

log = logging.getLogger(__name__)

OUTBOX_SIZE = 32  # control messages waiting for a slow client; past this the client is dropped


class ServerFull(Exception):
    pass


class AlreadyConnected(Exception):
    pass


@dataclass
class Frame:
    params: ParamsModel
    image: Image.Image | None  # None for text-input pipelines
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class SessionStats:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # replaced in the slot before the worker took them
    errors: int = 0


class OutputSlot:
    """The latest encoded output of a session and a way to wait for the next one (event loop only)."""

    def __init__(self) -> None:
        self.jpeg: bytes | None = None
        self.seq = 0
        self._changed = asyncio.Event()

    def publish(self, jpeg: bytes) -> None:
        self.jpeg = jpeg
        self.seq += 1
        self.notify()

    def notify(self) -> None:
        """Wake every waiter (new frame, session closed, stream replaced)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class Session:
    def __init__(self, session_id: str, params: ParamsModel) -> None:
        self.id = session_id
        self.short_id = session_id[:8]
        self.params = params
        self.viewer_token = secrets.token_urlsafe(18)  # read-only viewer link (/api/view/{token}); not the id
        self.created_at = self.last_message_at = time.monotonic()
        self.stats = SessionStats()
        # Shared with the worker, under SessionManager's lock:
        self.pending: Frame | None = None
        self.in_flight = False
        self.streaming = False
        self.closed = False
        # Event loop only:
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_SIZE)
        self.output = OutputSlot()
        self.stream_token = 0
        self.frame_requested = False
        self.outputs: list[Output] = []  # NDI, Syphon: started with the first stream, stopped on close
        self.outputs_started = False
        self.reply: asyncio.Future[Any] | None = None  # a one-shot job's: where its result goes

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

    def send_error(self, message: str) -> None:
        self.stats.errors += 1
        self.send({"status": "error", "message": message})


class SessionManager:
    def __init__(
        self,
        max_users: int,
        *,
        outputs: Callable[[], list[Output]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.max_users = max_users
        self.make_outputs = outputs or list
        self.metrics = metrics or Metrics()
        self.metrics.count_sessions(lambda: len(self._sessions))
        self._sessions: dict[str, Session] = {}
        self._viewers: dict[str, Session] = {}  # viewer token -> session
        self._order: list[Session] = []  # round-robin order for the worker
        self._cond = threading.Condition()

    # --- event loop side ---

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def get_by_viewer_token(self, token: str) -> Session | None:
        return self._viewers.get(token)

    def open(self, session_id: str, params: ParamsModel) -> Session:
        with self._cond:
            if session_id in self._sessions:
                raise AlreadyConnected(session_id)
            if self.max_users and len(self._sessions) >= self.max_users:
                raise ServerFull()
            session = Session(session_id, params)
            session.outputs = self.make_outputs()
            self._sessions[session_id] = session
            self._viewers[session.viewer_token] = session
            self._order.append(session)
        return session

    def submit_oneshot(self, frame: Frame, reply: asyncio.Future[Any]) -> Session:
        """A one-shot job (POST /api/process): a pseudo-session holding its one frame, served in turn with
        the live sessions (it joins the back of the round-robin). It is not a user: not counted, not
        reachable by id or viewer token, no outputs. `deliver` sets `reply`; close it after."""
        session = Session(uuid.uuid4().hex, frame.params)
        session.reply = reply
        with self._cond:
            session.streaming = True
            session.pending = frame
            self._order.append(session)
            self._cond.notify()
        self.metrics.frames_in.labels("process").inc()
        return session

    def close(self, session: Session) -> None:
        with self._cond:
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]
                del self._viewers[session.viewer_token]  # the viewer link dies with the session
            if session in self._order:
                self._order.remove(session)
            session.closed = True
            session.pending = None
        for output in session.outputs:
            output.stop()
        session.output.notify()

    def offer(self, session: Session, frame: Frame) -> None:
        """Put a frame in the session's slot; a frame still waiting there is replaced (latest wins)."""
        with self._cond:
            if session.closed:
                return
            if session.pending is not None:
                session.stats.frames_dropped += 1
                self.metrics.frames_dropped.labels("input").inc()
            session.pending = frame
            session.stats.frames_in += 1
            self.metrics.frames_in.labels("live").inc()
            self._cond.notify()

    def set_streaming(self, session: Session, streaming: bool) -> None:
        with self._cond:
            session.streaming = streaming
            self._cond.notify()
        if streaming and not session.outputs_started and not session.closed:
            session.outputs_started = True  # the outputs live from the first stream to the session's end
            for output in session.outputs:
                output.start(session.id)

    def is_idle(self, session: Session) -> bool:
        """Nothing waiting and nothing being generated: time to ask the client for a frame."""
        with self._cond:
            return session.pending is None and not session.in_flight

    def finish(self, session: Session) -> None:
        """The worker is done with the session's frame."""
        with self._cond:
            session.in_flight = False

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    # --- worker side ---

    def take(
        self,
        timeout: float,
        max_batch: int = 1,
        key: Callable[[ParamsModel], Any] | None = None,
        batch_wait: float = 0.0,
    ) -> list[tuple[Session, Frame]]:
        """The next ready frames, sessions served in turn: the first ready session's frame, plus up to
        `max_batch - 1` frames of other ready sessions whose `key(params)` is the same (they can run as
        one batch). When other streaming sessions' frames are on their way, wait up to `batch_wait`
        seconds for them: without it, users in ping-pong fall into taking turns and never share a
        batch. Empty when nothing came within `timeout`."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                ready = [s for s in self._order if s.pending is not None and s.streaming]
                if ready:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    return []
            first = ready[0]
            if max_batch == 1 or key is None:
                return [self._hand_out(first)]
            first_key = key(first.pending.params)
            batch_deadline = time.monotonic() + batch_wait
            while True:
                chosen = [first] + [
                    s for s in self._order
                    if s is not first and s.pending is not None and s.streaming and key(s.pending.params) == first_key
                ][: max_batch - 1]
                coming = [s for s in self._order if s.streaming and s.pending is None and not s.in_flight]
                remaining = batch_deadline - time.monotonic()
                if len(chosen) == max_batch or not coming or remaining <= 0:
                    return [self._hand_out(session) for session in chosen]
                self._cond.wait(remaining)

    def _hand_out(self, session: Session) -> tuple[Session, Frame]:
        """Give the session's frame to the worker and send the session to the back of the turn."""
        frame, session.pending = session.pending, None
        session.in_flight = True
        self._order.remove(session)
        self._order.append(session)
        return session, frame

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
