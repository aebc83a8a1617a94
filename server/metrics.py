"""Prometheus metrics (GET /metrics): one registry per app, never the process-wide default one, so
two apps in one process (tests) count separately.

The code that sees an event counts it: the session manager frames in and frames replaced in the slot,
each session or job its frames out and their timings (as they are delivered), the outputs what they
drop, the one-shot API its requests. Errors are counted by kind:

- `input`: a bad message, frame or parameter from a client (websocket or POST /api/process)
- `model`: the pipeline raised while generating a frame
- `output`: an NDI or Syphon output failed to start or to send a frame
- `deadline`: a model call outlived --frame-deadline, or a one-shot request --process-timeout
- `busy`: refused for capacity: the server is full (--max-users), too many one-shot requests, or the
  model unavailable
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "live_diffusion"
# From a GPU frame (tens of ms) to a full-size model on a CPU (several seconds).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SOURCES = ("live", "process")  # websocket sessions, POST /api/process
ERROR_KINDS = ("input", "model", "deadline", "output", "busy")
CONTENT_TYPE = CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from server.frames import Result


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(f"{PREFIX}_sessions", "Live sessions (websockets) connected now", registry=r)
        self.viewers = Gauge(f"{PREFIX}_viewers", "Read-only viewer streams (/api/view, WHEP) open now", registry=r)
        self.webrtc_connections = Gauge(
            f"{PREFIX}_webrtc_connections", "WebRTC connections open now: pages, WHIP cameras, WHEP players", registry=r
        )
        self.process_requests = Gauge(
            f"{PREFIX}_process_requests", "One-shot POST /api/process requests in progress", registry=r
        )
        self.frames_in = Counter(
            f"{PREFIX}_frames_in", "Frames accepted for generation, by source (live, process)", ["source"], registry=r
        )
        self.frames_out = Counter(
            f"{PREFIX}_frames_out", "Frames generated and published, by source (live, process)", ["source"], registry=r
        )
        self.frames_dropped = Counter(
            f"{PREFIX}_frames_dropped",
            "Frames dropped: camera frames replaced in a session's slot before the model took them "
            "(stage=input), or generated frames an output skipped because it was still sending (stage=ndi, syphon)",
            ["stage"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            f"{PREFIX}_inference_seconds",
            "Time to generate a frame: the model, the safety checker if on, and the JPEG encode",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a frame waited in its session's slot for the model",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            f"{PREFIX}_latency_seconds",
            "End to end: frame accepted from the client to its output published (stream, outputs, one-shot reply)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors", "Errors by kind: input, model, deadline, output, busy", ["kind"], registry=r
        )
        self.temporal_memory = Gauge(
            f"{PREFIX}_temporal_memory_bytes", "Bytes the sessions' temporal-consistency memories hold now", registry=r
        )
        self.temporal_memory_budget = Gauge(
            f"{PREFIX}_temporal_memory_budget_bytes", "Bytes they may hold together (--temporal-memory-mb)", registry=r
        )
        # Every labelled series exists from the start (at 0), so rates work before the first event;
        # the ones counted every frame are looked up once here.
        self.frames_in_by_source = {source: self.frames_in.labels(source) for source in SOURCES}
        self.frames_out_by_source = {source: self.frames_out.labels(source) for source in SOURCES}
        self.input_frames_dropped = self.frames_dropped.labels("input")
        for kind in ERROR_KINDS:
            self.errors.labels(kind)

    def count_sessions(self, count: Callable[[], int]) -> None:
        """The sessions gauge reads the live count when scraped."""
        self.sessions.set_function(count)

    def count_temporal_memory(self, held: Callable[[], int], budget: int) -> None:
        """The temporal memory gauge reads the bytes held when scraped."""
        self.temporal_memory.set_function(held)
        self.temporal_memory_budget.set(budget)

    def frame_done(self, source: str, result: Result) -> None:
        """A frame came back from the worker; called on the event loop as it is published."""
        received_at = result.frame.received_at
        self.queue_wait_seconds.observe(max(0.0, result.started_at - received_at))
        self.inference_seconds.observe(max(0.0, result.finished_at - result.started_at))
        if result.error is None:
            self.frames_out_by_source[source].inc()
            self.latency_seconds.observe(max(0.0, time.monotonic() - received_at))
        else:
            self.errors.labels(result.error_kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
