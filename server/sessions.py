"""Sessions: one per connected user, each with a latest-wins frame slot, and the manager that owns
them. A one-shot job (POST /api/process) is a frame with a reply: it takes its turn in the same order,
but it is not a session.

The manager is the only writer of a session's state. The websocket conversation, the streams, the
worker and the app tell it what happened (`frame_accepted`, `frame_refused`, `stream_opened`,
`deliver`, `end`, ...) and read the rest. Among them it runs the ping-pong: one frame asked for
(`send_frame`) once nothing of the session's is waiting or being generated and a stream shows the
output.

Threads: the event loop calls every verb but `take`, `finish` and `wake`, which the worker thread
calls. What the two share (the slots, the in-flight flags, the streams, `closed`, the turn order) is
guarded by the manager's lock. Everything else on a Session belongs to the event loop.

Bounds: a session keeps at most one frame, as the client sent it (compressed; the worker decodes
the one it takes), at most `MAX_STREAMS_PER_SESSION` streams and `max_viewers` viewers, and
`OUTBOX_SIZE` control messages for a client that is slow to read them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from server.frames import Frame, Result
from server.metrics import Metrics
from server.mjpeg import OutputSlot

if TYPE_CHECKING:
    from pipelines import ParamsModel
    from server.outputs import Output

log = logging.getLogger(__name__)

OUTBOX_SIZE = 32  # control messages waiting for a slow client; past this the client is dropped
MAX_STREAMS_PER_SESSION = 4  # the page, a pop-out, a reload overlapping the old page, one more
# Frames whose header was fine but whose data the worker could not decode, with no good frame between
# them: the client is broken or hostile (each costs a round trip of messages, and no model time).
MAX_DAMAGED_FRAMES_IN_A_ROW = 100
EMPTY_FRAME_RETRY_S = 0.02  # the client has no camera frame yet: ask again shortly, not in a busy loop
TEXT_POLL_S = 0.2  # text pipelines, parameters unchanged: how soon to ask the client again

# The spellings of a user id accepted: a UUID's 32 hex digits with dashes anywhere, in braces or not,
# with a `urn:uuid:` prefix or not, in any case. server/logs.py redacts exactly these.
_USER_ID = re.compile(r"(?i)(?:urn:uuid:)?(\{)?([0-9a-f-]+)(?(1)\})")


PARAMS_NEWS_S = 0.05  # parameters changed from elsewhere (OSC) reach the client at most this often


@dataclass(frozen=True)
class Preset:
    """A page's preset: a name and the parameter values it sets (checked when kept and when recalled)."""

    name: str
    params: dict[str, Any]


class ServerFull(Exception):
    pass


class AlreadyConnected(Exception):
    pass


class TooManyStreams(Exception):
    """A session (or the server) has as many streams open as it allows; the message says which."""


def canonical_user_id(user_id: str) -> str | None:
    """The one spelling of a user id (a UUID: lower case, with dashes), or None when it is no UUID.
    Upper case, braces, `urn:uuid:` and dashes anywhere (or none) all name the same user; nothing else
    does (Python's own UUID parser would also take `+`, `_` and spaces)."""
    match = _USER_ID.fullmatch(user_id)
    if match is None:
        return None
    digits = match.group(2).replace("-", "")
    return str(uuid.UUID(digits)) if len(digits) == 32 else None


@dataclass
class SessionStats:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # replaced in the slot before the worker took them, or sent with no stream open
    errors: int = 0


@dataclass(eq=False)
class Stream:
    """One open MJPEG response of a session's output. `owner`: opened with the session's stream token,
    which only the holder of its websocket has."""

    owner: bool
    pixels: bool = False  # a WebRTC track: it shows the output's pixels rather than its JPEG
    opened_at: float = field(default_factory=time.monotonic)
    ended: bool = False  # closed by the manager, to make room for one of the owner's


class Session:
    """One connected user. The manager writes every field (see the module docstring); the rest of the
    server reads them."""

    def __init__(self, session_id: str, params: ParamsModel, outputs: list[Output]) -> None:
        self.id = session_id
        self.short_id = session_id[:8]  # what logs show: never the whole id
        self.params = params
        self.viewer_token = secrets.token_urlsafe(18)  # read-only viewer link (/api/view/{token}); not the id
        self.stream_token = secrets.token_urlsafe(18)  # the owner's streams (sent over its websocket only)
        self.created_at = self.last_activity_at = time.monotonic()
        # When the worker last finished this session's frame: time spent waiting on the server (in the
        # queue, or generating) is not the client's idleness.
        self.server_turn_ended_at = self.created_at
        self.stats = SessionStats()
        # Shared with the worker, under the manager's lock:
        self.pending: Frame | None = None
        self.in_flight = False
        self.streams: list[Stream] = []  # open /api/stream responses and WebRTC tracks, oldest first
        self.pixel_streams = 0  # of them, WebRTC tracks: the worker keeps the output's pixels for them
        self.video_feeds = 0  # WebRTC and WHIP tracks feeding the camera: the websocket is not asked for frames
        self.closed = False
        # Event loop only:
        self.viewers = 0  # open /api/view responses and WHEP players
        self.pixel_viewers = 0  # of them, WHEP players (pixels, as the WebRTC tracks)
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_SIZE)
        self.ended = asyncio.Event()  # set when the session ends, whoever ends it
        self.output = OutputSlot()
        self.frame_requested = False  # a send_frame is out, not yet answered
        self.retry: asyncio.TimerHandle | None = None  # the one timer asking the client again
        self.damaged_frames_in_a_row = 0
        self.image_prompt: bytes | None = None  # the client's image prompt (a JPEG), sent with each of its frames
        self.presets: list[Preset] = []  # the page's, slot n at n - 1 (OSC's /live/preset n)
        self.params_news: dict[str, Any] = {}  # values changed from elsewhere, not yet told to the client
        self.params_news_timer: asyncio.TimerHandle | None = None
        self.outputs = outputs  # NDI, Syphon: started with the first stream, stopped at the end
        self.outputs_started = False

    @property
    def streaming(self) -> bool:
        return bool(self.streams)

    @property
    def reads_jpeg(self) -> bool:
        """An MJPEG stream or viewer is open (the worker encodes a JPEG for it)."""
        return len(self.streams) > self.pixel_streams or self.viewers > self.pixel_viewers

    @property
    def reads_pixels(self) -> bool:
        """A WebRTC track, NDI or Syphon shows the output (the worker hands over its pixels)."""
        return bool(self.outputs) or self.pixel_streams > 0 or self.pixel_viewers > 0

    def ready(self) -> bool:
        """A frame is waiting and someone watches its output (under the manager's lock)."""
        return self.pending is not None and self.streaming and not self.closed


class Job:
    """A one-shot job (POST /api/process): one frame, and the future its request awaits."""

    def __init__(self, frame: Frame, reply: asyncio.Future[Result]) -> None:
        self.short_id = "one-shot"
        self.pending: Frame | None = frame
        self.in_flight = False
        self.reply = reply

    def ready(self) -> bool:
        return self.pending is not None


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

    # --- looking sessions up (event loop) ---

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        """The session of a user id in any spelling of its UUID."""
        canonical = canonical_user_id(session_id)
        return self._sessions.get(canonical) if canonical else None

    def get_by_viewer_token(self, token: str) -> Session | None:
        return self._viewers.get(token)

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

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def counts(self) -> tuple[int, int]:
        """(streams, viewers) open now, over all sessions."""
        sessions = self.all()
        return sum(len(s.streams) for s in sessions), sum(s.viewers for s in sessions)

    # --- a session's life (event loop) ---

    def open(self, session_id: str, params: ParamsModel) -> Session:
        """A new session for a canonical user id (see `canonical_user_id`)."""
        with self._cond:
            if session_id in self._sessions:
                raise AlreadyConnected(session_id)
            if self.max_users and len(self._sessions) >= self.max_users:
                raise ServerFull()
            session = Session(session_id, params, self.make_outputs())
            self._sessions[session_id] = session
            self._viewers[session.viewer_token] = session
            self._turns.append(session)
        self._opened.set()
        self._opened = asyncio.Event()
        return session

    def end(self, session: Session, last_message: dict[str, Any] | None = None) -> None:
        """End the session, whoever ends it (the client left, a timeout, shutdown, too many bad
        frames): `last_message` (a reason) and then the end of its messages are queued for the
        client, its frame is dropped, its streams, viewers and outputs stop, and its user id and
        viewer link are free. Safe to call again: only the first call does anything."""
        with self._cond:
            if session.closed:
                return
            if last_message is not None:
                self._queue(session, last_message)
            self._queue(session, None)
            session.closed = True
            session.pending = None
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]
                del self._viewers[session.viewer_token]  # the viewer link dies with the session
            if session in self._turns:
                self._turns.remove(session)
            self._cond.notify_all()
        for timer in (session.retry, session.params_news_timer):
            if timer is not None:
                timer.cancel()
        session.ended.set()
        for output in session.outputs:
            output.stop()
        session.output.notify()

    # --- the conversation (event loop) ---

    def send(self, session: Session, message: dict[str, Any]) -> None:
        """Queue a control message for the client; a client that stops reading is disconnected."""
        if session.closed:
            return
        if not self._queue(session, message):
            log.warning("session %s: client is not reading its messages; closing", session.short_id)
            self.end(session)

    def send_error(self, session: Session, message: str) -> None:
        session.stats.errors += 1
        self.send(session, {"status": "error", "message": message})

    async def next_message(self, session: Session) -> dict[str, Any] | None:
        """The next message for the client; None once the session has ended and said all it had to."""
        return await session.outbox.get()

    def activity(self, session: Session) -> None:
        """A valid frame (or, for text pipelines, parameters): the client is there; the idle timeout
        starts again."""
        session.last_activity_at = time.monotonic()

    def idle_since(self, session: Session) -> float | None:
        """Since when the session has waited on its client: its last activity or the end of the
        server's last turn, whichever is later. None while the server owes it a frame (its frame
        waits for the worker or is being generated): a busy server never times out a client that
        does as asked."""
        with self._cond:
            if session.pending is not None or session.in_flight:
                return None
            return max(session.last_activity_at, session.server_turn_ended_at)

    def frame_accepted(self, session: Session, frame: Frame) -> None:
        """The client answered send_frame with a valid frame (or, text pipelines, parameters): it
        takes the session's slot (latest wins). A text pipeline's unchanged parameters make nothing:
        the client is asked again a little later, so clients that only answer send_frame still see
        their changes soon."""
        session.frame_requested = False
        if frame.data is None and frame.params is session.params and session.stats.frames_in:
            self._ask_again_later(session, TEXT_POLL_S)
            return
        if frame.params is not session.params:
            if log.isEnabledFor(logging.DEBUG):
                changed = {
                    name: value for name, value in frame.params.model_dump().items()
                    if getattr(session.params, name) != value
                }
                log.debug("session %s: params changed: %s", session.short_id, _short(changed))
            session.params = frame.params
        if self._fill_slot(session, frame):
            self.send(session, {"status": "wait"})

    def video_frame(self, session: Session, frame: Frame) -> None:
        """A camera frame from the session's WebRTC track (or NDI input): it takes the slot (latest
        wins), without the websocket's ping-pong (the track sends at the camera's rate)."""
        session.last_activity_at = time.monotonic()
        self._fill_slot(session, frame)

    def _fill_slot(self, session: Session, frame: Frame) -> bool:
        """The frame takes the session's slot, replacing a frame the worker has not taken; False if the
        session has ended."""
        with self._cond:
            if session.closed:
                return False
            session.stats.frames_in += 1
            self.metrics.frames_in_by_source["live"].inc()
            if session.pending is not None or not session.streaming:
                session.stats.frames_dropped += 1
                self.metrics.input_frames_dropped.inc()
                if session.pending is not None and session.pending.new_source:
                    frame = replace(frame, new_source=True)  # the replaced frame's news is this one's too
            # With no stream open the frame is not kept: nobody would see it, and opening a stream
            # asks the client for a fresh one.
            session.pending = frame if session.streaming else None
            self._cond.notify_all()
        return True

    def image_prompt_set(self, session: Session, jpeg: bytes | None) -> None:
        """The client's image prompt (checked already), or None: the camera frame is the image prompt."""
        session.image_prompt = jpeg

    def presets_set(self, session: Session, presets: list[Preset]) -> None:
        session.presets = presets

    def params_changed(self, session: Session, params: ParamsModel, *, tell_client: bool = False) -> None:
        """New parameters without a frame (a WebRTC data channel, OSC): the next frames are drawn with them.
        `tell_client` (a change from elsewhere than the client): the client hears the changed values in
        a {"status": "params"} message, at most one every PARAMS_NEWS_S, so its controls show them."""
        changed = {name: value for name, value in params.model_dump().items() if getattr(session.params, name) != value}
        log.debug("session %s: params changed: %s", session.short_id, _short(changed))
        session.params = params
        if tell_client and changed and not session.closed:
            session.params_news.update(changed)
            if session.params_news_timer is None:
                session.params_news_timer = asyncio.get_running_loop().call_later(
                    PARAMS_NEWS_S, self._tell_params_news, session)

    def _tell_params_news(self, session: Session) -> None:
        news, session.params_news, session.params_news_timer = session.params_news, {}, None
        if news and not session.closed:
            self.send(session, {"status": "params", "params": news})

    def frame_refused(self, session: Session, problem: str) -> None:
        """A bad message or frame: the client hears why, and is asked for a new frame."""
        self.send_error(session, problem)
        session.frame_requested = False
        self._request_frame_if_idle(session)

    def no_frame_yet(self, session: Session) -> None:
        """The client answered send_frame with an empty frame (no camera frame yet): ask again
        shortly. An empty frame nobody asked for changes nothing, so a flood of them costs one timer
        at most."""
        if session.frame_requested:
            session.frame_requested = False
            self._ask_again_later(session, EMPTY_FRAME_RETRY_S)

    def _ask_again_later(self, session: Session, delay: float) -> None:
        if session.retry is None and not session.closed:
            session.retry = asyncio.get_running_loop().call_later(delay, self._retry, session)

    def _retry(self, session: Session) -> None:
        session.retry = None
        self._request_frame_if_idle(session)

    def _request_frame_if_idle(self, session: Session) -> None:
        """Ask the client for its next frame once nothing of it is waiting or being generated and a
        stream shows the output (ping-pong: one frame in flight)."""
        if session.closed or session.frame_requested or session.video_feeds:
            return
        with self._cond:
            idle = session.streaming and session.pending is None and not session.in_flight
        if idle:
            session.frame_requested = True
            self.send(session, {"status": "send_frame"})

    # --- streams and viewers (event loop) ---

    def stream_opened(self, session: Session, *, owner: bool, pixels: bool = False) -> Stream:
        """A stream of the session's output opens; every open stream gets every frame. Past the bound
        a stranger's stream is refused (`TooManyStreams`), while the owner's always opens: the oldest
        stream that is not the owner's makes room (or, if all are, the owner's oldest)."""
        with self._cond:
            if len(session.streams) >= MAX_STREAMS_PER_SESSION:
                if not owner:
                    raise TooManyStreams(
                        f"This session has {len(session.streams)} streams open; the limit is {MAX_STREAMS_PER_SESSION}"
                    )
                evicted = next((s for s in session.streams if not s.owner), session.streams[0])
                evicted.ended = True
                session.streams.remove(evicted)
                session.pixel_streams = sum(s.pixels for s in session.streams)
                log.info("session %s: closed its oldest %s stream for one of the owner's", session.short_id,
                         "owner's" if evicted.owner else "other")
            stream = Stream(owner, pixels)
            session.streams.append(stream)
            session.pixel_streams = sum(s.pixels for s in session.streams)
            self._cond.notify_all()
        session.output.notify()  # an ended stream's response stops
        if not session.outputs_started and not session.closed:
            session.outputs_started = True  # the outputs live from the first stream to the session's end
            for output in session.outputs:
                output.start(session.id)
        self._request_frame_if_idle(session)
        return stream

    def stream_closed(self, session: Session, stream: Stream) -> None:
        with self._cond:
            if stream in session.streams:
                session.streams.remove(stream)
                session.pixel_streams = sum(s.pixels for s in session.streams)
            if not session.streaming:
                session.pending = None  # nobody watches: not kept (see frame_accepted)
                session.frame_requested = False

    def viewer_opened(self, session: Session, *, pixels: bool = False) -> None:
        if session.viewers >= self.max_viewers:
            raise TooManyStreams(f"This session has {session.viewers} viewers; the limit is {self.max_viewers}")
        session.viewers += 1
        session.pixel_viewers += pixels
        self.metrics.viewers.inc()

    def viewer_closed(self, session: Session, *, pixels: bool = False) -> None:
        session.viewers -= 1
        session.pixel_viewers -= pixels
        self.metrics.viewers.dec()

    def video_feed_started(self, session: Session) -> None:
        """A WebRTC or WHIP track feeds the session's camera: the websocket's ping-pong pauses."""
        session.video_feeds += 1

    def video_feed_ended(self, session: Session) -> None:
        session.video_feeds -= 1
        self._request_frame_if_idle(session)  # the websocket's camera again

    # --- one-shot jobs (event loop) ---

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

    # --- results (event loop) ---

    def deliver(self, source: Source, result: Result) -> None:
        """A frame has been generated (or failed): a job's request gets it; a session publishes it to
        its streams, viewers and outputs and is asked for its next frame."""
        if isinstance(source, Job):
            self.metrics.frame_done("process", result)
            if not source.reply.done():
                source.reply.set_result(result)
            return
        session = source
        if session.closed:
            return
        self.metrics.frame_done("live", result)
        if result.notice is not None:
            self.send(session, {"status": "info", "message": result.notice})
        if result.error is None:
            session.stats.frames_out += 1
            session.damaged_frames_in_a_row = 0
            session.output.publish(result.jpeg, result.pixels)  # the MJPEG streams and viewers, WebRTC tracks
            for output in session.outputs:  # NDI, Syphon: each takes the pixels on its own thread
                output.send(result.pixels)
        else:
            self.send_error(session, result.error or "Model error")
            if result.error_kind == "input":
                session.damaged_frames_in_a_row += 1
                if session.damaged_frames_in_a_row >= MAX_DAMAGED_FRAMES_IN_A_ROW:
                    log.info("session %s: %d damaged frames in a row; closing", session.short_id,
                             session.damaged_frames_in_a_row)
                    message = f"{MAX_DAMAGED_FRAMES_IN_A_ROW} damaged frames in a row: closing"
                    self.end(session, {"status": "error", "message": message})
                    return
        self._request_frame_if_idle(session)

    # --- the worker's side (its thread) ---

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
        if max_batch == 1 or key is None or not isinstance(first, Session) or first.pending is None:
            return [first]
        first_key = key(first.pending.params)
        others = [
            s for s in ready[1:] if isinstance(s, Session) and s.pending is not None and key(s.pending.params) == first_key
        ]
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
            if isinstance(source, Session):
                source.server_turn_ended_at = time.monotonic()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- internals ---

    @staticmethod
    def _queue(session: Session, message: dict[str, Any] | None) -> bool:
        try:
            session.outbox.put_nowait(message)
            return True
        except asyncio.QueueFull:
            return False


def _short(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={str(value)[:80]!r}" for name, value in values.items())
