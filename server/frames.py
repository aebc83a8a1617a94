"""What flows through the server: a `Frame` (a client's image and the parameters to draw it with) and
the worker's `Result` for it (an encoded JPEG, or an error). Plain values, made once, never patched."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from pipelines import ParamsModel

ErrorKind = Literal["input", "model", "deadline"]


@dataclass(frozen=True)
class Frame:
    params: ParamsModel
    data: bytes | None  # the image as the client sent it (JPEG, or PNG for one-shot jobs); None for text pipelines
    received_at: float = field(default_factory=time.monotonic)
    new_source: bool = False  # the first frame of another input (camera, screen, file): the stream starts afresh
    image_prompt: bytes | None = None  # the session's image prompt (JPEG) when the pipeline takes one
    video: Any = None  # instead of data: a camera frame a WebRTC track decoded (av.VideoFrame); pixels in the worker


@dataclass(frozen=True)
class Result:
    """What the worker made of a frame, or an error: an encoded JPEG (for one-shot jobs, and sessions
    with an MJPEG stream or viewer) and its pixels (for WebRTC tracks, NDI and Syphon)."""

    frame: Frame
    started_at: float
    finished_at: float
    jpeg: bytes | None = None
    pixels: np.ndarray | None = None  # the same frame as RGB pixels (read-only)
    error: str | None = None
    error_kind: ErrorKind = "model"
    reused: bool = False  # the similarity filter re-sent the previous output
    notice: str | None = None  # news for the client beside the frame (its temporal memory lowered, say)
