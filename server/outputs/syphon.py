"""Syphon output (--syphon, macOS): one Syphon server per streaming session, named
'<--syphon-name> <short session id>', for OBS (with the Syphon source), Resolume, MadMapper, VDMX.

Frames are shared as Metal textures (RGBA) through syphon-python (pip install .[syphon]). The
publishing itself sits behind the small `Publisher` interface, so the output's threading and dropping
are the same code everywhere and can be exercised off macOS with a stand-in publisher.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from server.outputs.base import OutputUnavailable, ThreadedOutput

if TYPE_CHECKING:
    from server.metrics import Metrics


def check() -> None:
    if sys.platform != "darwin":
        raise OutputUnavailable(
            f"--syphon needs macOS: Syphon is a macOS technology and this system is {sys.platform}. "
            "Use --ndi to send the frames to OBS or a VJ tool on any OS."
        )
    try:
        import syphon  # noqa: F401
    except ImportError:
        raise OutputUnavailable("--syphon needs the syphon-python package: pip install .[syphon]") from None


class Publisher(Protocol):
    """One named Syphon server: publish RGBA frames (height x width x 4, uint8), then stop."""

    def publish(self, rgba: np.ndarray) -> None: ...

    def stop(self) -> None: ...


class MetalPublisher:
    """The real thing: a SyphonMetalServer and a texture of the frame's size (macOS only)."""

    def __init__(self, name: str) -> None:
        import objc
        import syphon

        self._objc = objc
        self._server = syphon.SyphonMetalServer(name)
        self._texture: Any = None

    def publish(self, rgba: np.ndarray) -> None:
        from syphon.utils.numpy import copy_image_to_mtl_texture
        from syphon.utils.raw import create_mtl_texture

        height, width, _ = rgba.shape
        # This thread is not the main thread: give the Objective-C objects of each frame a pool to go to.
        with self._objc.autorelease_pool():
            if self._texture is None or (self._texture.width(), self._texture.height()) != (width, height):
                self._texture = create_mtl_texture(self._server.device, width, height)
            copy_image_to_mtl_texture(rgba, self._texture)
            self._server.publish_frame_texture(self._texture)

    def stop(self) -> None:
        self._server.stop()


def to_rgba(rgb: np.ndarray) -> np.ndarray:
    """RGB (height x width x 3) -> RGBA (height x width x 4, opaque), the one copy a texture needs."""
    height, width, _ = rgb.shape
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., :3] = rgb
    rgba[..., 3] = 255
    return rgba


class SyphonOutput(ThreadedOutput):
    kind = "syphon"

    def __init__(
        self,
        name: str,
        publisher: Callable[[str], Publisher] = MetalPublisher,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(metrics)
        self.name = name
        self._make_publisher = publisher
        self._publisher: Publisher | None = None

    def open(self, session_id: str) -> None:
        self._publisher = self._make_publisher(f"{self.name} {session_id[:8]}")

    def publish(self, pixels: np.ndarray, fps: float | None) -> None:
        assert self._publisher is not None
        self._publisher.publish(to_rgba(pixels))  # Syphon has no frame rate: receivers take frames as they come

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None
