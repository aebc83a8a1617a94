"""Outputs beyond the browser: each streaming session's frames also go to NDI (any OS) or Syphon
(macOS), for OBS or a VJ tool.

One small interface, `Output`: `start(session_id)`, `send(pixels)`, `stop()`, all called on the event
loop and none of them blocking. `ThreadedOutput` implements it with one thread per output and a
one-frame slot: a frame that arrives while the previous one is still being sent replaces the one
waiting (latest wins), so a slow receiver drops frames and never slows inference or the event loop.
A new kind of output (a virtual camera, a recorder, RTMP) is one new module with a `ThreadedOutput`
subclass (`open`, `publish`, `close`) and a line in `Outputs.__init__`.

Outputs get the RGB pixels the worker converted once from the generated image (shared with the JPEG
encoder, read-only); each output converts them to its own format on its own thread.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Callable

from server.outputs.base import FrameRate, Output, OutputUnavailable, ThreadedOutput

if TYPE_CHECKING:
    from server.config import Config
    from server.metrics import Metrics

__all__ = ["FrameRate", "Output", "OutputUnavailable", "Outputs", "ThreadedOutput", "check"]


class Outputs:
    """The configured outputs: checked at construction (start-up), a fresh set made for each session,
    all of them waited for at shutdown."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        check(config)
        self._makers: list[Callable[[], ThreadedOutput]] = []
        if config.ndi:
            from server.outputs.ndi import NdiOutput

            self._makers.append(lambda: NdiOutput(config.ndi_name, metrics))
        if config.syphon:
            from server.outputs.syphon import SyphonOutput

            self._makers.append(lambda: SyphonOutput(config.syphon_name, metrics=metrics))
        self._made: weakref.WeakSet[ThreadedOutput] = weakref.WeakSet()

    def for_session(self) -> list[Output]:
        outputs = [make() for make in self._makers]
        self._made.update(outputs)
        return list(outputs)

    def join(self, timeout: float) -> None:
        """Wait (a blocking call: not on the event loop) for stopped outputs to finish closing."""
        deadline = time.monotonic() + timeout
        for output in list(self._made):
            output.join(max(0.0, deadline - time.monotonic()))


def check(config: Config) -> None:
    """Fail at start-up, with what to do, when a configured output cannot run here."""
    if config.ndi:
        from server.outputs import ndi

        ndi.check()
    if config.syphon:
        from server.outputs import syphon

        syphon.check()
