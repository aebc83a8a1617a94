"""The inference thread: the only code that touches the model. It pulls ready frames from the session
manager (so there is no queue to grow), several users' at once when they can share a batch, runs the
pipeline, converts each image to RGB pixels once (for the JPEG encoder and the outputs), encodes the
JPEG once, and hands the results back to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pipelines.base import Pipeline, batch_key
from server.imaging import encode_jpeg, rgb_pixels
from server.sessions import Frame, Session, SessionManager

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 300
THUMBNAIL_SIZE = (64, 64)


@dataclass
class Result:
    frame: Frame
    started_at: float
    finished_at: float
    jpeg: bytes | None = None
    pixels: np.ndarray | None = None  # the same frame as RGB pixels (read-only), for the outputs
    error: str | None = None
    reused: bool = False  # the similarity filter re-sent the previous output


def describe_model_error(error: Exception) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return "Out of memory while generating: try a smaller width and height or fewer steps"
    return f"Model error: {type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


def thumbnail(image: Image.Image) -> np.ndarray:
    """A small vector of the frame in [-1, 1], for comparing frames (what StreamDiffusion compares)."""
    small = image.convert("RGB").resize(THUMBNAIL_SIZE, Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32).ravel() / 127.5 - 1.0


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8))


@dataclass
class SimilarityFilter:
    """Skip the model when a session's frame has barely changed since the last one generated (same
    parameters, cosine similarity above `threshold`): its previous output is sent again, at most
    `max_skips` times in a row, so a still scene still refreshes."""

    threshold: float
    max_skips: int

    def __post_init__(self) -> None:
        # Per session, owned by the worker thread; entries go with their sessions.
        self._last: weakref.WeakKeyDictionary[Session, tuple[np.ndarray, Frame, Result, int]] = weakref.WeakKeyDictionary()

    def reuse(self, session: Session, frame: Frame) -> Result | None:
        """The previous result, if this frame may skip the model."""
        last = self._last.get(session)
        if last is None or frame.image is None:
            return None
        previous_thumbnail, previous_frame, previous_result, skips = last
        if skips >= self.max_skips or frame.params != previous_frame.params:
            return None
        current = thumbnail(frame.image)
        if cosine_similarity(current, previous_thumbnail) < self.threshold:
            return None
        self._last[session] = (previous_thumbnail, previous_frame, previous_result, skips + 1)
        return previous_result

    def remember(self, session: Session, frame: Frame, result: Result) -> None:
        if frame.image is not None and result.jpeg is not None:
            self._last[session] = (thumbnail(frame.image), frame, result, 0)


class Worker:
    def __init__(
        self,
        pipeline: Pipeline,
        sessions: SessionManager,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Session, Result], None],
        jpeg_quality: int,
        safety_checker: Callable[[Image.Image], Image.Image] | None = None,
        max_batch: int = 1,
        batch_wait: float = 0.0,
        similarity_filter: SimilarityFilter | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.sessions = sessions
        self.loop = loop
        self.deliver = deliver  # called on the event loop
        self.jpeg_quality = jpeg_quality
        self.safety_checker = safety_checker
        # Frames of several users run as one batch only where the pipeline can batch.
        self.max_batch = max_batch if hasattr(pipeline, "predict_batch") else 1
        self.batch_wait = batch_wait
        self.similarity_filter = similarity_filter
        self.frames_done = 0  # frames the model generated (not counting re-sent ones)
        self.frames_reused = 0
        self.batches = 0  # model calls: frames_done / batches is the mean batch size
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
            jobs = self.sessions.take(timeout=0.5, max_batch=self.max_batch, key=batch_key, batch_wait=self.batch_wait)
            if jobs:
                self._process(jobs)

    def _process(self, jobs: list[tuple[Session, Frame]]) -> None:
        started_at = time.monotonic()
        results: dict[int, Result] = {}
        to_generate = []
        for index, (session, frame) in enumerate(jobs):
            reused = self.similarity_filter.reuse(session, frame) if self.similarity_filter else None
            if reused is not None:
                results[index] = Result(frame, started_at, 0.0, reused.jpeg, reused.pixels, reused=True)
                self.frames_reused += 1
            else:
                to_generate.append(index)
        if to_generate:
            results.update(self._generate([jobs[i] for i in to_generate], to_generate, started_at))
        finished_at = time.monotonic()
        for index, (session, frame) in enumerate(jobs):
            result = results[index]
            result.finished_at = finished_at
            if self.similarity_filter and not result.reused:
                self.similarity_filter.remember(session, frame, result)
            self.sessions.finish(session)
            try:
                self.loop.call_soon_threadsafe(self.deliver, session, result)
            except RuntimeError:  # the loop has closed: the server is shutting down
                return

    def _generate(self, jobs: list[tuple[Session, Frame]], indices: list[int], started_at: float) -> dict[int, Result]:
        frames = [frame for _, frame in jobs]
        try:
            if len(frames) == 1:
                images = [self.pipeline.predict(frames[0].params, frames[0].image)]
            else:
                images = self.pipeline.predict_batch([f.params for f in frames], [f.image for f in frames])
            results = {}
            for index, frame, image in zip(indices, frames, images):
                if self.safety_checker is not None:
                    image = self.safety_checker(image)
                pixels = rgb_pixels(image)
                results[index] = Result(frame, started_at, 0.0, jpeg=encode_jpeg(pixels, self.jpeg_quality), pixels=pixels)
            self.frames_done += len(frames)
            self.batches += 1
            return results
        except Exception as error:  # the clients hear of it; their next frames are tried again
            log.exception("sessions %s: generating failed", ", ".join(s.short_id for s, _ in jobs))
            if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            message = describe_model_error(error)
            return {index: Result(frame, started_at, 0.0, error=message) for index, frame in zip(indices, frames)}
