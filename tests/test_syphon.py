"""Syphon output (--syphon) through the output interface, with a stand-in publisher where Syphon itself
cannot run (it is macOS only), and the start-up errors: --syphon off macOS, and a missing optional
package naming the extra to install."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from bench.live import SERVER_MAIN, server_env
from server import outputs
from server.config import parse
from server.metrics import Metrics
from server.outputs import FrameRate, OutputUnavailable
from server.outputs import ndi as ndi_output
from server.outputs.syphon import SyphonOutput
from server.sessions import SessionManager

SESSION_ID = "1234abcd-0000-4000-8000-000000000000"


class StandInPublisher:
    """Stands in for a Syphon Metal server: keeps what it is given; optionally held up (each publish
    waits until `gate` is set, as a stalled receiver would hold it), or broken."""

    def __init__(self, name: str, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.name = name
        self.gate = gate
        self.fail = fail
        self.frames: list[np.ndarray] = []
        self.publishing = threading.Event()  # set when a publish has begun
        self.stopped = threading.Event()

    def publish(self, rgba: np.ndarray) -> None:
        self.publishing.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail:
            raise RuntimeError("stand-in publisher failure")
        self.frames.append(rgba)

    def stop(self) -> None:
        self.stopped.set()


class Publishers:
    """A publisher factory that remembers what it made."""

    def __init__(self, **options) -> None:
        self.options = options
        self.made: list[StandInPublisher] = []

    def __call__(self, name: str) -> StandInPublisher:
        publisher = StandInPublisher(name, **self.options)
        self.made.append(publisher)
        return publisher


def frame(value: int, width: int = 64, height: int = 48) -> np.ndarray:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = value  # red carries the frame's number
    pixels[..., 1] = np.arange(width, dtype=np.uint8)[None, :]
    pixels[..., 2] = 200
    pixels.flags.writeable = False  # as the worker hands them over
    return pixels


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_frames_go_out_as_rgba_under_the_session_name():
    publishers = Publishers()
    output = SyphonOutput("Live Diffusion", publisher=publishers)
    output.start(SESSION_ID)
    for value in (10, 20, 30):
        output.send(frame(value))
        wait_until(lambda: output.frames_sent == value // 10)
    output.stop()
    output.join(5)
    [publisher] = publishers.made
    assert publisher.name == "Live Diffusion 1234abcd"
    assert [int(f[0, 0, 0]) for f in publisher.frames] == [10, 20, 30]
    rgba = publisher.frames[-1]
    assert rgba.shape == (48, 64, 4) and rgba.dtype == np.uint8
    assert (rgba[..., :3] == frame(30)).all() and (rgba[..., 3] == 255).all()
    assert publisher.stopped.is_set()
    output.send(frame(40))  # after stop: ignored
    assert len(publisher.frames) == 3


def test_a_slow_publisher_drops_frames_and_never_holds_up_the_sender():
    """While the publisher is stuck on a frame, every send returns at once; the frames sent meanwhile
    replace one another in the slot (each replaced one is dropped and counted), and the newest is the
    one published once the publisher is free again."""
    gate = threading.Event()
    publishers = Publishers(gate=gate)
    metrics = Metrics()
    output = SyphonOutput("Live Diffusion", publisher=publishers, metrics=metrics)
    output.start(SESSION_ID)
    try:
        output.send(frame(0))
        wait_until(lambda: publishers.made and publishers.made[0].publishing.is_set())  # stuck on frame 0

        sent = threading.Event()  # on another thread: a send that waited for the publisher would hang

        def send_the_rest() -> None:
            for value in range(1, 20):
                output.send(frame(value))
            sent.set()

        threading.Thread(target=send_the_rest, daemon=True).start()
        assert sent.wait(30), "a send waited for the publisher"
        assert not gate.is_set() and output.frames_sent == 0  # all 19 sent while frame 0 was still stuck
        # Frame 1 went into the empty slot; each of frames 2 to 19 replaced the one waiting there.
        assert output.frames_dropped == 18
        assert metrics.registry.get_sample_value("live_diffusion_frames_dropped_total", {"stage": "syphon"}) == 18
    finally:
        gate.set()
    wait_until(lambda: output.frames_sent == 2)
    output.stop()
    output.join(5)
    assert [int(f[0, 0, 0]) for f in publishers.made[0].frames] == [0, 19]  # latest wins, no backlog


def test_a_failing_publisher_is_counted_and_the_output_goes_on():
    publishers = Publishers(fail=True)
    metrics = Metrics()
    output = SyphonOutput("Live Diffusion", publisher=publishers, metrics=metrics)
    output.start(SESSION_ID)
    for value in range(3):
        output.send(frame(value))
        wait_until(lambda: metrics.registry.get_sample_value("live_diffusion_errors_total", {"kind": "output"}) == value + 1)
    output.stop()
    output.join(5)
    assert publishers.made[0].stopped.is_set()


def test_a_publisher_that_cannot_start_stops_the_output():
    metrics = Metrics()

    def broken(name: str) -> StandInPublisher:
        raise RuntimeError("no Metal device")

    output = SyphonOutput("Live Diffusion", publisher=broken, metrics=metrics)
    output.start(SESSION_ID)
    output.join(5)
    output.send(frame(1))  # a no-op: nothing waits, nothing raises
    assert metrics.registry.get_sample_value("live_diffusion_errors_total", {"kind": "output"}) == 1


def test_the_frame_rate_outputs_report_is_the_real_one():
    rate = FrameRate()
    rate.start(0.0)
    now = 0.0
    for _ in range(10):  # 10 frames a second
        now += 0.1
        fps = rate.tick(now)
    assert fps == pytest.approx(10)
    now += 60  # the stream was closed for a minute: a pause, not a rate
    assert rate.tick(now) == pytest.approx(10)
    for _ in range(5):  # the model became slower: 2 frames a second shows within a few frames
        now += 0.5
        fps = rate.tick(now)
    assert fps == pytest.approx(2)


def test_sessions_start_their_outputs_with_the_stream_and_stop_them_when_they_end():
    publishers = Publishers()
    made: list[SyphonOutput] = []

    def session_outputs():
        made.append(SyphonOutput("Live Diffusion", publisher=publishers))
        return list(made[-1:])

    sessions = SessionManager(0, outputs=session_outputs)
    session = sessions.open(SESSION_ID, params=None)  # type: ignore[arg-type]
    assert publishers.made == []  # connected, not streaming: no Syphon server yet
    stream = sessions.stream_opened(session, owner=True)
    wait_until(lambda: len(publishers.made) == 1)
    sessions.stream_closed(session, stream)
    sessions.stream_opened(session, owner=True)  # a reloaded stream keeps the same server
    session.outputs[0].send(frame(5))
    wait_until(lambda: made[0].frames_sent == 1)
    sessions.end(session)
    made[0].join(5)
    assert len(publishers.made) == 1 and publishers.made[0].stopped.is_set()


@pytest.mark.skipif(sys.platform == "darwin", reason="Syphon runs on macOS")
def test_syphon_off_macos_fails_at_start_up_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, str(SERVER_MAIN), "--pipeline", "bench.echo_pipeline", "--syphon", "--port", "0"],
        capture_output=True, text=True, timeout=60, env=server_env(),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "--syphon needs macOS" in output and "--ndi" in output
    assert "Traceback" not in output
    assert "Loading pipeline" not in output  # refused before the model loads
    with pytest.raises(OutputUnavailable, match="needs macOS"):
        outputs.check(parse(["--syphon"]))


def test_a_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "NDIlib", None)  # as if ndi-python were not installed
    monkeypatch.setattr(ndi_output, "_runtime", None)
    with pytest.raises(OutputUnavailable, match=r"ndi-python package: pip install \.\[ndi\]"):
        outputs.check(parse(["--ndi"]))
    if sys.platform == "darwin":
        monkeypatch.setitem(sys.modules, "syphon", None)
        with pytest.raises(OutputUnavailable, match=r"pip install \.\[syphon\]"):
            outputs.check(parse(["--syphon"]))
