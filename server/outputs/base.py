"""The interface of an output (`Output`) and the threaded, latest-wins implementation every output here
uses (`ThreadedOutput`): see the package docstring."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from server.metrics import Metrics

log = logging.getLogger(__name__)

RATE_WINDOW = 9  # intervals the frame rate is the median of


class OutputUnavailable(Exception):
    """A configured output cannot run here; the message says what to do (shown at start-up)."""


class Output(ABC):
    """Where a session's generated frames go besides its MJPEG stream (one instance per session)."""

    kind: ClassVar[str]

    @abstractmethod
    def start(self, session_id: str) -> None:
        """Begin (create the session's NDI source, say). Returns at once."""

    @abstractmethod
    def send(self, pixels: np.ndarray) -> None:
        """Hand over a frame: RGB, height x width x 3, uint8, read-only. Returns at once; when the output
        is still busy with an earlier frame, a frame is dropped rather than queued."""

    @abstractmethod
    def stop(self) -> None:
        """End (remove the source). Returns at once; safe to call twice, or without start."""


class FrameRate:
    """The rate frames arrive at, in frames per second: 1 / the median of the last few intervals, so a
    pause (the stream closed a while) or a hiccup does not count and a real change shows within a few
    frames. The first interval is measured from the stream's start: about one frame time."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._intervals: deque[float] = deque(maxlen=RATE_WINDOW)

    def start(self, now: float) -> None:
        self._last = now

    def tick(self, now: float) -> float | None:
        if self._last is not None and now > self._last:
            self._intervals.append(now - self._last)
        self._last = now
        return 1.0 / statistics.median(self._intervals) if self._intervals else None


class ThreadedOutput(Output):
    """An output that sends on its own thread, fed through a one-frame latest-wins slot.

    Subclasses implement `open(session_id)`, `publish(pixels, fps)` and `close()`; all three run on the
    output's thread, so they may block (network, GPU) without slowing anything else.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.frames_sent = 0
        self.frames_dropped = 0
        self.rate = FrameRate()
        self._cond = threading.Condition()
        self._pending: tuple[np.ndarray, float | None] | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failed = False  # a publish failed once: later failures are counted, not logged again

    # --- the event loop's side ---

    def start(self, session_id: str) -> None:
        if self._thread is not None:
            return
        self.rate.start(time.monotonic())
        self._thread = threading.Thread(
            target=self._run, args=(session_id,), name=f"output-{self.kind}-{session_id[:8]}", daemon=True
        )
        self._thread.start()

    def send(self, pixels: np.ndarray) -> None:
        fps = self.rate.tick(time.monotonic())
        with self._cond:
            if self._stopping or self._thread is None:
                return
            if self._pending is not None:  # still sending an earlier frame: the waiting one goes
                self.frames_dropped += 1
                if self.metrics is not None:
                    self.metrics.frames_dropped.labels(self.kind).inc()
            self._pending = (pixels, fps)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._pending = None
            self._cond.notify()

    def join(self, timeout: float) -> None:
        """Wait for the thread to finish closing (after stop); blocks, so never on the event loop."""
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the output's thread ---

    @abstractmethod
    def open(self, session_id: str) -> None: ...

    @abstractmethod
    def publish(self, pixels: np.ndarray, fps: float | None) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def _run(self, session_id: str) -> None:
        try:
            self.open(session_id)
        except Exception:
            log.exception("session %s: the %s output could not start; its frames go nowhere", session_id[:8], self.kind)
            self._count_error()
            self.stop()
            return
        try:
            while True:
                with self._cond:
                    while self._pending is None and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    (pixels, fps), self._pending = self._pending, None
                try:
                    self.publish(pixels, fps)
                    self.frames_sent += 1
                except Exception:
                    if not self._failed:
                        log.exception("session %s: the %s output failed to send a frame", session_id[:8], self.kind)
                    self._failed = True
                    self._count_error()
        finally:
            try:
                self.close()
            except Exception:
                log.exception("session %s: closing the %s output failed", session_id[:8], self.kind)
            log.info(
                "session %s: %s output closed after %d frames sent, %d dropped",
                session_id[:8], self.kind, self.frames_sent, self.frames_dropped,
            )

    def _count_error(self) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels("output").inc()
