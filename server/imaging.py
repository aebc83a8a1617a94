"""JPEG in and out with libjpeg-turbo (simplejpeg), with bounds checked before any pixel is decoded."""

from __future__ import annotations

import numpy as np
import simplejpeg
from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"


class FrameError(ValueError):
    """An input frame that cannot be used; the message is meant for the client."""


def decode_jpeg(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """JPEG bytes -> RGB image, refusing oversized or broken input before decoding pixels."""
    if len(data) > max_bytes:
        raise FrameError(f"Frame is {len(data)} bytes; the limit is {max_bytes}")
    if not data.startswith(JPEG_MAGIC):
        raise FrameError("Frame is not a JPEG image")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as error:
        raise FrameError(f"Frame is not a readable JPEG image ({error})") from None
    if width * height > max_pixels:
        raise FrameError(f"Frame is {width}x{height} pixels; the limit is {max_pixels} pixels")
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")  # grey and YCbCr both come out RGB
    except ValueError as error:
        raise FrameError(f"Frame is a damaged JPEG image ({error})") from None
    return Image.fromarray(pixels, "RGB")


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    pixels = np.asarray(image.convert("RGB"))
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420")
