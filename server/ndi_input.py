"""NDI as a session's camera: a thread finds the named NDI source on the network (OBS with its NDI
plugin, vMix, TouchDesigner, another Live Diffusion), receives its video frames and hands each to the
session's latest-wins slot, as a browser's camera frames go; when the source disappears it looks for
it again and carries on once it is back. Frames of any size or rate are taken as they come (the
pipeline crops to its own size); past --max-frame-pixels they are dropped, with a log line.

NDI discovery uses mDNS, plus loopback (`127.0.0.1`) so a source on the same machine is found even
where no mDNS daemon runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from server.outputs.ndi import runtime

log = logging.getLogger(__name__)

FIND_WAIT_MS = 500
CAPTURE_WAIT_MS = 500
SOURCE_GONE_S = 3.0  # no frame for this long: the source is gone, look for it again


@dataclass(frozen=True)
class PixelFrame:
    """A decoded camera frame (RGB, height x width x 3) for the worker, which makes it an image."""

    pixels: np.ndarray

    def to_image(self) -> Image.Image:
        return Image.fromarray(self.pixels)


def short_name(ndi_name: str) -> str:
    """NDI shows a source as 'MACHINE (name)'; a user names it either way."""
    if ndi_name.endswith(")") and " (" in ndi_name:
        return ndi_name[ndi_name.index(" (") + 2 : -1]
    return ndi_name


class NdiInput:
    """The frames of the NDI source `name` ('MACHINE (name)' or just 'name'), to `on_frame` (from its
    own thread), until `stop`."""

    def __init__(self, name: str, on_frame: Callable[[PixelFrame], None], max_pixels: int) -> None:
        self.name = name
        self.on_frame = on_frame
        self.max_pixels = max_pixels
        self.connected = False  # frames are coming from the source now
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ndi-input {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        ndi = runtime()
        finder = ndi.find_create_v2(ndi.FindCreate(True, None, "127.0.0.1"))
        try:
            while not self._stop.is_set():
                source = self._find(ndi, finder)
                if source is not None:
                    self._receive(ndi, source)
        finally:
            ndi.find_destroy(finder)

    def _find(self, ndi: object, finder: object) -> object | None:
        ndi.find_wait_for_sources(finder, FIND_WAIT_MS)
        for source in ndi.find_get_current_sources(finder):
            if self.name in (source.ndi_name, short_name(source.ndi_name)):
                return source
        return None

    def _receive(self, ndi: object, source: object) -> None:
        settings = ndi.RecvCreateV3()
        settings.color_format = ndi.RECV_COLOR_FORMAT_RGBX_RGBA
        receiver = ndi.recv_create_v3(settings)
        ndi.recv_connect(receiver, source)
        log.info("NDI input %r: connected", self.name)
        last_frame = time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() - last_frame < SOURCE_GONE_S:
                kind, video, _, _ = ndi.recv_capture_v2(receiver, CAPTURE_WAIT_MS)
                if kind != ndi.FRAME_TYPE_VIDEO:
                    continue
                try:
                    pixels = np.ascontiguousarray(video.data[:, :, :3])  # RGBX: a copy, the buffer goes back to NDI
                    size = (video.xres, video.yres)
                finally:
                    ndi.recv_free_video_v2(receiver, video)
                last_frame = time.monotonic()
                if size[0] * size[1] > self.max_pixels:
                    log.info("NDI input %r: a %dx%d frame is over --max-frame-pixels; dropped", self.name, *size)
                    continue
                self.connected = True
                self.frames += 1
                self.on_frame(PixelFrame(pixels))
        finally:
            self.connected = False
            ndi.recv_destroy(receiver)
            if not self._stop.is_set():
                log.info("NDI input %r: no frame for %.0f s; looking for the source again", self.name, SOURCE_GONE_S)
