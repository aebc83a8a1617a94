"""The inference thread: the only code that touches the model. It pulls ready frames from the session
manager (so there is no queue to grow), runs the pipeline, converts the image to RGB pixels once (for
the JPEG encoder and the outputs), encodes the JPEG once, and hands the result back to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pipelines.base import Pipeline
from server.imaging import encode_jpeg, rgb_pixels
from server.sessions import Frame, Session, SessionManager

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 300


@dataclass
class Result:
    frame: Frame
    started_at: float
    finished_at: float
    jpeg: bytes | None = None
    pixels: np.ndarray | None = None  # the same frame as RGB pixels (read-only), for the outputs
    error: str | None = None


def describe_model_error(error: Exception) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return "Out of memory while generating: try a smaller width and height or fewer steps"
    return f"Model error: {type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


class Worker:
    def __init__(
        self,
        pipeline: Pipeline,
        sessions: SessionManager,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Session, Result], None],
        jpeg_quality: int,
        safety_checker: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.sessions = sessions
        self.loop = loop
        self.deliver = deliver  # called on the event loop
        self.jpeg_quality = jpeg_quality
        self.safety_checker = safety_checker
        self.frames_done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end; a frame being generated is not interrupted (the thread is a daemon)."""
        self._stop.set()
        self.sessions.wake()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self.sessions.take(timeout=0.5)
            if job is not None:
                self._process(*job)

    def _process(self, session: Session, frame: Frame) -> None:
        started_at = time.monotonic()
        try:
            image = self.pipeline.predict(frame.params, frame.image)
            if self.safety_checker is not None:
                image = self.safety_checker(image)
            pixels = rgb_pixels(image)
            result = Result(frame, started_at, 0.0, jpeg=encode_jpeg(pixels, self.jpeg_quality), pixels=pixels)
        except Exception as error:  # the client hears of it; the next frame is tried again
            log.exception("session %s: generating a frame failed", session.short_id)
            if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            result = Result(frame, started_at, 0.0, error=describe_model_error(error))
        result.finished_at = time.monotonic()
        self.frames_done += 1
        self.sessions.finish(session)
        try:
            self.loop.call_soon_threadsafe(self.deliver, session, result)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass
