"""The session manager and the inference thread, driven directly (no server): faults stay with the
frames they concern, the thread survives them, and what it reports is true."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from bench.live import camera_jpeg
from pipelines import batch_key
from server.frames import Frame
from server.sessions import Job, Session, SessionManager
from server.worker import Worker
from tests.fault_pipeline import InputParams, Pipeline

SMALL = {"width": 256, "height": 256}
USER_IDS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(10)]


def params(**values: Any) -> InputParams:
    return InputParams(**{**SMALL, **values})


def frame(**values: Any) -> Frame:
    return Frame(params(**values), camera_jpeg(len(values)))


async def outcome(session: Session, timeout: float = 30.0) -> str:
    """'frame' once the session's output has a frame it has not had at the last call (or since it
    opened), or the text of the next error it is sent."""
    seq = getattr(session, "seen_seq", 0)
    deadline = time.monotonic() + timeout
    while session.output.seq == seq:
        while not session.outbox.empty():
            message = session.outbox.get_nowait()
            if message and message["status"] == "error":
                return message["message"]
        if time.monotonic() > deadline:
            raise AssertionError(f"session {session.id}: no frame and no error within {timeout} s")
        try:
            await asyncio.wait_for(session.output.changed(), 0.05)
        except asyncio.TimeoutError:
            pass
    session.seen_seq = session.output.seq  # type: ignore[attr-defined]
    return "frame"


class Harness:
    """A session manager and a worker on the running loop, with the supervisor running."""

    def __init__(self, *, max_batch: int = 1, batch_wait: float = 0.0, frame_deadline: float = 30.0) -> None:
        self.sessions = SessionManager(0)
        self.pipeline = Pipeline(None, None, None)  # type: ignore[arg-type]
        self.worker = Worker(
            self.pipeline, self.sessions, asyncio.get_running_loop(), jpeg_quality=80,
            max_frame_bytes=10**7, max_frame_pixels=10**7, frame_deadline=frame_deadline,
            max_batch=max_batch, batch_wait=batch_wait,
        )

    async def __aenter__(self) -> Harness:
        self.worker.start()
        self.supervisor = asyncio.create_task(self.worker.supervise_forever(0.05))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.supervisor.cancel()
        await asyncio.to_thread(self.worker.stop, 5.0)

    def streaming_session(self, index: int) -> Session:
        session = self.sessions.open(USER_IDS[index], params())
        self.sessions.stream_opened(session, owner=True)
        return session


def run(coro):
    return asyncio.run(coro)


def test_a_session_closing_while_its_batch_is_filled_is_left_out():
    """take() waits for the frames of other streaming sessions to fill a batch; a session that closes
    meanwhile is not handed out, and nothing breaks."""

    async def scenario():
        sessions = SessionManager(0)
        first, second = (sessions.open(USER_IDS[i], params()) for i in range(2))
        for session in (first, second):
            sessions.stream_opened(session, owner=True)
        sessions.frame_accepted(first, frame())
        taken: list[Any] = []
        errors: list[BaseException] = []

        def take() -> None:
            try:  # waits for second's frame (on its way) to fill a batch of 2
                taken.extend(sessions.take(timeout=10, max_batch=2, key=batch_key, batch_wait=10))
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=take)
        thread.start()
        await asyncio.sleep(0.2)  # let take() reach its wait (the result does not depend on it)
        sessions.end(first)
        sessions.frame_accepted(second, frame())
        await asyncio.to_thread(thread.join, 10)
        assert errors == []
        assert [source for source, _ in taken] == [second]

    run(scenario())


def test_a_pipeline_that_raises_fails_only_its_frames():
    async def scenario():
        async with Harness() as harness:
            failing, fine = harness.streaming_session(0), harness.streaming_session(1)
            harness.sessions.frame_accepted(failing, frame(fail=True))
            harness.sessions.frame_accepted(fine, frame())
            assert await outcome(failing) == "Model error: RuntimeError: stand-in model failure"
            assert await outcome(fine) == "frame"
            harness.sessions.frame_accepted(failing, frame())  # the next frame is generated as before
            assert await outcome(failing) == "frame"
            assert harness.worker.state().alive and harness.worker.restarts == 0

    run(scenario())


@pytest.mark.parametrize(
    "fault, expected",
    [
        ("few_images", "the pipeline returned 1 images for 2 frames"),
        ("wrong_size", "returned a 128x256 image for 256x256"),
        ("not_an_image", "returned a str, not an image"),
    ],
)
def test_a_pipeline_that_returns_the_wrong_thing_fails_that_batch(fault, expected):
    async def scenario():
        async with Harness(max_batch=2, batch_wait=10) as harness:
            first, second = harness.streaming_session(0), harness.streaming_session(1)
            harness.sessions.frame_accepted(first, frame(fault=fault))
            harness.sessions.frame_accepted(second, frame(fault=fault))
            for session in (first, second):
                message = await outcome(session)
                assert expected in message and message.startswith("Model error"), message
            assert harness.worker.batches == 0  # nothing was published as if generated
            for session in (first, second):
                harness.sessions.frame_accepted(session, frame())
            assert [await outcome(first), await outcome(second)] == ["frame", "frame"]

    run(scenario())


def test_a_hang_past_the_frame_deadline_is_given_up_and_reported():
    async def scenario():
        async with Harness(frame_deadline=0.5) as harness:
            stuck, waiting = harness.streaming_session(0), harness.streaming_session(1)
            harness.sessions.frame_accepted(stuck, frame(delay_ms=4000))
            await asyncio.to_thread(lambda: _wait(lambda: harness.worker.state().busy_s is not None))
            harness.sessions.frame_accepted(waiting, frame())
            message = await outcome(stuck, timeout=3.5)  # before the model returns
            assert message == "The model took longer than 0.5 s for this frame; it was dropped"
            state = harness.worker.state()
            assert state.stalled and state.alive and state.busy_s >= 0.5
            # The model returns at last: its late frame is dropped, the waiting frame is served.
            assert await outcome(waiting) == "frame"
            assert not harness.worker.state().stalled
            assert stuck.output.seq == 0  # the late image never reached the stream
            harness.sessions.frame_accepted(stuck, frame())
            assert await outcome(stuck) == "frame"

    run(scenario())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_that_ends_is_restarted():
    async def scenario():
        async with Harness() as harness:
            session = harness.streaming_session(0)
            harness.sessions.frame_accepted(session, frame(fault="end_thread"))
            assert (await outcome(session)).startswith("Model error: ThreadKiller")
            await asyncio.to_thread(lambda: _wait(lambda: harness.worker.restarts == 1))
            harness.sessions.frame_accepted(session, frame())
            assert await outcome(session) == "frame"
            assert harness.worker.state().alive

    run(scenario())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_thread_reports_not_alive_until_restarted():
    async def scenario():
        harness = Harness()
        harness.worker.start()
        session = harness.streaming_session(0)
        harness.sessions.frame_accepted(session, frame(fault="end_thread"))
        assert (await outcome(session)).startswith("Model error: ThreadKiller")
        await asyncio.to_thread(lambda: _wait(lambda: not harness.worker.state().alive))
        assert harness.worker.restarts == 0  # nobody has supervised yet: it says it is dead
        while not harness.worker.state().alive:  # the supervisor restarts it (after a short backoff)
            harness.worker.supervise()
            await asyncio.sleep(0.05)
        assert harness.worker.restarts == 1
        await asyncio.to_thread(harness.worker.stop, 5.0)

    run(scenario())


def test_one_shot_jobs_take_turns_with_sessions_and_get_their_errors():
    async def scenario():
        async with Harness() as harness:
            session = harness.streaming_session(0)
            loop = asyncio.get_running_loop()
            good, bad = loop.create_future(), loop.create_future()
            harness.sessions.submit(Job(frame(), good))
            harness.sessions.submit(Job(Frame(params(), b"\xff\xd8\xff broken"), bad))
            harness.sessions.frame_accepted(session, frame())
            assert await outcome(session) == "frame"
            assert (await asyncio.wait_for(good, 30)).jpeg is not None
            broken = await asyncio.wait_for(bad, 30)
            assert broken.jpeg is None and broken.error_kind == "input" and "JPEG" in broken.error

    run(scenario())


def test_frames_of_a_session_without_a_stream_are_not_kept():
    sessions = SessionManager(0)
    session = sessions.open(USER_IDS[0], params())
    sessions.frame_accepted(session, frame())
    assert session.pending is None and session.stats.frames_dropped == 1
    stream = sessions.stream_opened(session, owner=True)
    sessions.frame_accepted(session, frame())
    sessions.frame_accepted(session, frame())  # latest wins: one frame kept, as sent
    assert session.pending is not None and session.stats.frames_dropped == 2
    sessions.stream_closed(session, stream)
    assert session.pending is None


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
