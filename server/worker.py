"""The inference thread: the only code that touches the model. It pulls ready frames from the session
manager (so there is no queue to grow), several users' at once when they can share a batch, decodes
them, runs the pipeline, converts each image to RGB pixels once (for the JPEG encoder and the
outputs), encodes the JPEG once, and hands each result to its session or job on the event loop.

Faults stay with the frames they concern. A frame that cannot be decoded, a pipeline that raises or
returns the wrong images: those frames' sources get an error and the next frames are generated as
before. A model call that outlives `frame_deadline` is given up: its sources hear so at once, and its
late images are dropped. `supervise()`, run by the event loop, does that, and starts a new thread
should the thread ever end; `state()` says what is true now, for /api/health.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from pipelines import Pipeline, SupportsBatch, SupportsImagePrompt, SupportsStreamMemory, batch_key
from server.frames import ErrorKind, Frame, Result
from server.imaging import FrameError, decode_image, encode_jpeg, rgb_pixels
from server.sessions import Session, SessionManager, Source
from server.stream_memory import StreamMemories

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 300
THUMBNAIL_SIZE = (64, 64)
TAKE_TIMEOUT_S = 0.5  # how often an idle thread looks at its stop flag
RESTART_BACKOFF_S = (0.0, 0.5, 2.0, 10.0)  # wait before a restart, by how many threads in a row ended quickly
QUICK_DEATH_S = 5.0
IMAGE_PROMPTS_KEPT = 8  # decoded image prompts kept (one a session in use, a few more)


def describe_model_error(error: BaseException) -> str:
    if _is_out_of_memory(error):
        return "Out of memory while generating: try a smaller width and height or fewer steps"
    return f"Model error: {type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError"  # torch.OutOfMemoryError, without importing torch


def _free_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
        self._last: weakref.WeakKeyDictionary[Session, tuple[np.ndarray, Frame, Outcome, int]] = weakref.WeakKeyDictionary()

    def reuse(self, session: Session, frame: Frame, image: Image.Image) -> Outcome | None:
        """The previous output, if this frame may skip the model."""
        last = self._last.get(session)
        if last is None:
            return None
        previous_thumbnail, previous_frame, previous_result, skips = last
        if skips >= self.max_skips or frame.params != previous_frame.params or frame.image_prompt != previous_frame.image_prompt:
            return None
        if cosine_similarity(thumbnail(image), previous_thumbnail) < self.threshold:
            return None
        self._last[session] = (previous_thumbnail, previous_frame, previous_result, skips + 1)
        return previous_result

    def remember(self, session: Session, frame: Frame, image: Image.Image, outcome: Outcome) -> None:
        if outcome.error is None:
            self._last[session] = (thumbnail(image), frame, outcome, 0)


@dataclass(frozen=True)
class Outcome:
    """What became of one frame in the thread, before it is timed and handed back as a `Result`: its
    JPEG and its pixels (each where someone reads it), or an error."""

    jpeg: bytes | None = None
    pixels: np.ndarray | None = None
    error: str | None = None
    error_kind: ErrorKind = "model"
    reused: bool = False
    notice: str | None = None


@dataclass(frozen=True)
class WorkerState:
    """What /api/health reports of the inference thread."""

    alive: bool  # the thread runs
    busy_s: float | None  # how long the model call in progress has taken so far
    stalled: bool  # a model call has outlived the frame deadline and not yet returned
    restarts: int  # threads started after the first one ended


@dataclass
class _Call:
    """The frames the thread is working on, for the supervisor to give up on past the deadline."""

    jobs: list[tuple[Source, Frame]]
    started_at: float
    expired: bool = False


class Worker:
    def __init__(
        self,
        pipeline: Pipeline,
        sessions: SessionManager,
        loop: asyncio.AbstractEventLoop,
        *,
        jpeg_quality: int,
        max_frame_bytes: int,
        max_frame_pixels: int,
        frame_deadline: float,
        safety_checker: Callable[[Image.Image], Image.Image] | None = None,
        max_batch: int = 1,
        batch_wait: float = 0.0,
        similarity_filter: SimilarityFilter | None = None,
        temporal_budget: int = 2**30,
    ) -> None:
        self.pipeline = pipeline
        self.sessions = sessions
        self.loop = loop
        self.jpeg_quality = jpeg_quality
        self.max_frame_bytes = max_frame_bytes
        self.max_frame_pixels = max_frame_pixels
        self.frame_deadline = frame_deadline
        self.safety_checker = safety_checker
        # Frames of several users run as one batch only where the pipeline can batch.
        self.max_batch = max_batch if isinstance(pipeline, SupportsBatch) else 1
        self.batch_wait = batch_wait
        self.similarity_filter = similarity_filter
        # Temporal consistency: each session's memory of its stream, for pipelines that keep one.
        self.memories = StreamMemories(pipeline, temporal_budget) if isinstance(pipeline, SupportsStreamMemory) else None
        # IP-Adapter set-ups: each session's image prompt goes with its frames, decoded once while in use.
        self.takes_image_prompts = isinstance(pipeline, SupportsImagePrompt) and pipeline.takes_image_prompt
        self.image_prompts: OrderedDict[bytes, Image.Image] = OrderedDict()
        self.frames_done = 0  # frames the model generated (not counting re-sent ones)
        self.frames_reused = 0
        self.batches = 0  # model calls: frames_done / batches is the mean batch size
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _call (the thread and the supervisor)
        self._call: _Call | None = None
        self._thread: threading.Thread | None = None
        self._thread_started_at = 0.0
        self._dead_since: float | None = None  # when the supervisor found the thread ended
        self._quick_deaths = 0  # threads in a row that ended soon after starting

    # --- the event loop's side ---

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread_started_at = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end; a frame being generated is not interrupted (the thread is a daemon)."""
        self._stop.set()
        self.sessions.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def state(self) -> WorkerState:
        with self._lock:
            call = self._call
            busy_s = time.monotonic() - call.started_at if call else None
            stalled = call is not None and call.expired
        alive = self._thread is not None and self._thread.is_alive()
        return WorkerState(alive=alive, busy_s=busy_s, stalled=stalled, restarts=self.restarts)

    def supervise(self) -> None:
        """Called on the event loop every fraction of a second: give up on a model call past the
        deadline, and start a new thread if the thread has ended."""
        self._expire_overdue()
        if self._stop.is_set() or self._thread is None or self._thread.is_alive():
            return
        now = time.monotonic()
        if self._dead_since is None:
            self._dead_since = now
            lived = now - self._thread_started_at
            self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH_S else 0
            log.error("The inference thread ended after %.1f s", lived)
        # A thread that ends as soon as it starts is not restarted in a busy loop.
        if now - self._dead_since < RESTART_BACKOFF_S[min(self._quick_deaths, len(RESTART_BACKOFF_S) - 1)]:
            return
        self._dead_since = None
        self.restarts += 1
        log.error("Starting a new inference thread (restart %d)", self.restarts)
        self.start()

    async def supervise_forever(self, interval: float = 0.25) -> None:
        while not self._stop.is_set():
            self.supervise()
            await asyncio.sleep(interval)

    def _expire_overdue(self) -> None:
        with self._lock:
            call = self._call
            if call is None or call.expired or time.monotonic() - call.started_at < self.frame_deadline:
                return
            call.expired = True
        log.error(
            "The model has taken over %g s (--frame-deadline) for sessions %s; giving up on those frames",
            self.frame_deadline, ", ".join(source.short_id for source, _ in call.jobs),
        )
        message = f"The model took longer than {self.frame_deadline:g} s for this frame; it was dropped"
        for source, frame in call.jobs:
            self.sessions.finish(source)
            self.sessions.deliver(source, Result(frame, call.started_at, time.monotonic(), error=message, error_kind="deadline"))

    # --- the thread ---

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self.sessions.take(
                    TAKE_TIMEOUT_S, max_batch=self.max_batch, key=batch_key, batch_wait=self.batch_wait
                )
            except Exception:  # a fault of this code, not of a frame; nothing was handed out
                log.exception("The inference thread failed to take frames; it goes on")
                self._stop.wait(TAKE_TIMEOUT_S)
                continue
            if jobs:
                self._process(jobs)

    def _process(self, jobs: list[tuple[Source, Frame]]) -> None:
        started_at = time.monotonic()
        with self._lock:
            self._call = _Call(jobs, started_at)
        try:
            outcomes = self._outcomes(jobs)
        except BaseException as error:  # a fault of this code, or the thread is ending: nobody waits for ever
            if isinstance(error, Exception):
                log.exception("The inference thread failed while serving a frame; it goes on")
            if self._end_call() is not None:
                outcomes = [Outcome(error=describe_model_error(error))] * len(jobs)
                self._deliver(jobs, outcomes, started_at)
            if not isinstance(error, Exception):
                raise
            return
        if self._end_call() is None:
            log.warning("The model returned after %.1f s, past the deadline; its frames were dropped",
                        time.monotonic() - started_at)
            return
        self._deliver(jobs, outcomes, started_at)

    def _end_call(self) -> _Call | None:
        """The call that just ended, or None when the supervisor has already given up on it."""
        with self._lock:
            call, self._call = self._call, None
        return None if call is None or call.expired else call

    def _deliver(self, jobs: list[tuple[Source, Frame]], outcomes: list[Outcome], started_at: float) -> None:
        finished_at = time.monotonic()
        for (source, frame), outcome in zip(jobs, outcomes):
            result = Result(frame, started_at, finished_at, outcome.jpeg, outcome.pixels, outcome.error,
                            outcome.error_kind, outcome.reused, outcome.notice)
            self.sessions.finish(source)
            try:
                self.loop.call_soon_threadsafe(self.sessions.deliver, source, result)
            except RuntimeError:  # the loop has closed: the server is shutting down
                return

    def _outcomes(self, jobs: list[tuple[Source, Frame]]) -> list[Outcome]:
        """One outcome per job, in order: decoded, generated (or re-sent) and encoded, or an error."""
        outcomes: list[Outcome | None] = [None] * len(jobs)
        images: list[Image.Image | None] = [None] * len(jobs)
        prompts: list[Image.Image | None] = [None] * len(jobs)
        to_generate = []
        for index, (source, frame) in enumerate(jobs):
            try:
                if frame.video is not None:
                    images[index] = frame.video.to_image()  # decoded by the WebRTC track: to RGB here, off the loop
                elif frame.data is not None:
                    images[index] = decode_image(
                        frame.data, max_bytes=self.max_frame_bytes, max_pixels=self.max_frame_pixels,
                        min_size=_params_size(frame),
                    )
                prompts[index] = self._image_prompt(frame)
            except FrameError as error:
                outcomes[index] = Outcome(error=str(error), error_kind="input")
                continue
            reused = None
            if self.similarity_filter and isinstance(source, Session) and images[index] is not None:
                reused = self.similarity_filter.reuse(source, frame, images[index])
            if reused is not None:
                outcomes[index] = Outcome(reused.jpeg, reused.pixels, reused=True)
                self.frames_reused += 1
            else:
                to_generate.append(index)
        if to_generate:
            generated = self._generate([jobs[i] for i in to_generate], [images[i] for i in to_generate],
                                       [prompts[i] for i in to_generate])
            for index, outcome in zip(to_generate, generated):
                outcomes[index] = outcome
                source, frame = jobs[index]
                image = images[index]
                if self.similarity_filter and isinstance(source, Session) and image is not None:
                    self.similarity_filter.remember(source, frame, image, outcome)
        return [outcome or Outcome(error="Model error: no result") for outcome in outcomes]

    def _image_prompt(self, frame: Frame) -> Image.Image | None:
        """A frame's image prompt, decoded (once while it is in use); FrameError if it cannot be."""
        if frame.image_prompt is None or not self.takes_image_prompts:
            return None
        image = self.image_prompts.get(frame.image_prompt)
        if image is None:
            try:
                image = decode_image(frame.image_prompt, max_bytes=self.max_frame_bytes, max_pixels=self.max_frame_pixels)
            except FrameError as error:
                raise FrameError(f"Image prompt: {error}") from None
            self.image_prompts[frame.image_prompt] = image
            if len(self.image_prompts) > IMAGE_PROMPTS_KEPT:
                self.image_prompts.popitem(last=False)
        self.image_prompts.move_to_end(frame.image_prompt)
        return image

    def _generate(self, jobs: list[tuple[Source, Frame]], images: list[Image.Image | None],
                  prompts: list[Image.Image | None]) -> list[Outcome]:
        frames = [frame for _, frame in jobs]
        try:
            outputs, notices = self._predict(jobs, images, prompts)
            if not isinstance(outputs, list) or len(outputs) != len(frames):
                count = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
                raise PipelineFault(f"the pipeline returned {count} images for {len(frames)} frames")
            outcomes = []
            for (source, frame), image, notice in zip(jobs, outputs, notices):
                image = self._checked(frame, image)
                if self.safety_checker is not None:
                    image = self.safety_checker(image)
                # A session watched only over WebRTC (and NDI, Syphon) needs no JPEG: pixels only.
                jpeg = encode_jpeg(image, self.jpeg_quality) if not isinstance(source, Session) or source.reads_jpeg else None
                pixels = rgb_pixels(image) if isinstance(source, Session) and source.reads_pixels else None
                outcomes.append(Outcome(jpeg, pixels, notice=notice))
            self.frames_done += len(frames)
            self.batches += 1
            return outcomes
        except Exception as error:  # the clients hear of it; their next frames are tried again
            log.exception("Generating %d frame(s) failed", len(frames))
            if _is_out_of_memory(error):
                _free_gpu_cache()
            return [Outcome(error=describe_model_error(error))] * len(frames)

    def _predict(self, jobs: list[tuple[Source, Frame]], images: list[Image.Image | None],
                 prompts: list[Image.Image | None]) -> tuple[object, list[str | None]]:
        """The pipeline's images for these frames, with each session's stream memory where the pipeline
        keeps one (and what its session should hear of it), and image prompts where it takes them, as
        one batch where there are several."""
        params = [frame.params for _, frame in jobs]
        extra: dict[str, Any] = {"image_prompts": prompts} if self.takes_image_prompts else {}
        if self.memories is not None:
            memories, notices = self.memories.for_frames(jobs)
            try:
                return self.memories.pipeline.predict_batch(params, images, memories, **extra), notices
            finally:
                self.memories.count()
        notices: list[str | None] = [None] * len(jobs)
        if extra:
            return self.pipeline.predict_batch(params, images, **extra), notices  # type: ignore[attr-defined]
        if len(jobs) == 1:
            return [self.pipeline.predict(params[0], images[0])], notices
        assert isinstance(self.pipeline, SupportsBatch)  # max_batch is 1 otherwise
        return self.pipeline.predict_batch(params, images), notices

    @staticmethod
    def _checked(frame: Frame, image: object) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise PipelineFault(f"the pipeline returned a {type(image).__name__}, not an image")
        size = _params_size(frame)
        if size is not None and image.size != size:
            raise PipelineFault(f"the pipeline returned a {image.width}x{image.height} image for {size[0]}x{size[1]}")
        return image


class PipelineFault(RuntimeError):
    """A pipeline broke its contract (the wrong number, kind or size of images)."""


def _params_size(frame: Frame) -> tuple[int, int] | None:
    """The output size the frame's parameters ask for, when they say (the input is decoded no larger
    than needed to cover it)."""
    width, height = getattr(frame.params, "width", None), getattr(frame.params, "height", None)
    return (width, height) if isinstance(width, int) and isinstance(height, int) else None
