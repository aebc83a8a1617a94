"""NDI output (--ndi): one NDI source per streaming session, named '<--ndi-name> <short session id>',
for OBS (with the NDI plugin), vMix, Resolume and other NDI receivers on the network.

Frames go out as BGRX, which NDI takes as is: the one conversion from the shared RGB pixels happens on
this output's thread, with the measured frame rate of the session. Needs ndi-python (pip install .[ndi]),
whose wheels bundle the NDI runtime.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from server.outputs.base import OutputUnavailable, ThreadedOutput

if TYPE_CHECKING:
    from server.metrics import Metrics

FPS_DENOMINATOR = 1000  # the frame rate is sent as N / 1000: 7.25 fps -> 7250 / 1000
UNKNOWN_FPS = (30000, 1001)  # NDI's own default, for a frame sent before any rate could be measured

# --- The NDI runtime: a process-wide resource -------------------------------------------------------
# NDIlib_initialize() must run once per process before the first sender, and NDIlib_destroy() must
# never run while a sender lives. The simplest rule that keeps both: initialise once, under this lock,
# and never destroy (the process's exit releases it). This is the only module-level state in the
# server; it is a handle on a process-wide library, not session or model state.
_runtime_lock = threading.Lock()
_runtime: ModuleType | None = None


def runtime() -> ModuleType:
    """The NDIlib module with its runtime initialised (once per process)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            try:
                import NDIlib
            except ImportError:
                raise OutputUnavailable("--ndi needs the ndi-python package: pip install .[ndi]") from None
            if not NDIlib.initialize():
                raise OutputUnavailable("--ndi: the NDI runtime does not run on this CPU (NDIlib_initialize failed)")
            _runtime = NDIlib
        return _runtime


def check() -> None:
    runtime()


def to_bgrx(rgb: np.ndarray) -> np.ndarray:
    """RGB (height x width x 3) -> BGRX (height x width x 4, X = 255), the one copy NDI needs."""
    height, width, _ = rgb.shape
    bgrx = np.empty((height, width, 4), np.uint8)
    bgrx[..., :3] = rgb[..., ::-1]
    bgrx[..., 3] = 255
    return bgrx


def frame_rate(fps: float | None) -> tuple[int, int]:
    if fps is None:
        return UNKNOWN_FPS
    return max(1, round(fps * FPS_DENOMINATOR)), FPS_DENOMINATOR


class NdiOutput(ThreadedOutput):
    kind = "ndi"

    def __init__(self, name: str, metrics: Metrics | None = None) -> None:
        super().__init__(metrics)
        self.name = name
        self._ndi: ModuleType | None = None
        self._sender: object | None = None

    def open(self, session_id: str) -> None:
        ndi = self._ndi = runtime()
        source_name = f"{self.name} {session_id[:8]}"
        # No clocking: frames go out as the model makes them; the frame rate says how fast that is.
        self._sender = ndi.send_create(ndi.SendCreate(source_name, None, False, False))
        if self._sender is None:
            raise RuntimeError(f"NDI could not create the source {source_name!r}")

    def publish(self, pixels: np.ndarray, fps: float | None) -> None:
        ndi = self._ndi
        assert ndi is not None and self._sender is not None
        height, width, _ = pixels.shape
        rate_n, rate_d = frame_rate(fps)
        frame = ndi.VideoFrameV2(
            width, height, ndi.FOURCC_VIDEO_TYPE_BGRX, rate_n, rate_d, timecode=ndi.SEND_TIMECODE_SYNTHESIZE
        )
        frame.data = to_bgrx(pixels)
        ndi.send_send_video_v2(self._sender, frame)  # synchronous: the buffer is free when it returns

    def close(self) -> None:
        if self._ndi is not None and self._sender is not None:
            self._ndi.send_destroy(self._sender)
            self._sender = None
