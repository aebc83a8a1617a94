"""JPEG in and out with libjpeg-turbo (simplejpeg), PNG in (one-shot API), with bounds checked before
any pixel is decoded."""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FrameError(ValueError):
    """An input frame that cannot be used (damaged, say); the message is meant for the client."""


class FrameTooLarge(FrameError):
    """Over the byte or pixel cap."""


class UnsupportedFrame(FrameError):
    """Not an image of a format this accepts."""


def check_jpeg(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) of a JPEG within the caps, read from its header only (microseconds): what the
    event loop checks of a frame before anyone decodes it."""
    if len(data) > max_bytes:
        raise FrameTooLarge(f"Frame is {len(data)} bytes; the limit is {max_bytes}")
    if not data.startswith(JPEG_MAGIC):
        raise UnsupportedFrame("Frame is not a JPEG image")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as error:
        raise FrameError(f"Frame is not a readable JPEG image ({error})") from None
    if width * height > max_pixels:
        raise FrameTooLarge(f"Frame is {width}x{height} pixels; the limit is {max_pixels} pixels")
    return width, height


def check_png(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) of a PNG within the caps, read from its header only."""
    if len(data) > max_bytes:
        raise FrameTooLarge(f"Frame is {len(data)} bytes; the limit is {max_bytes}")
    if not data.startswith(PNG_MAGIC):
        raise UnsupportedFrame("Frame is not a PNG image")
    # The first chunk is IHDR: its length (4 bytes), type, then width and height, big-endian.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise FrameError("Frame is not a readable PNG image (no IHDR header)")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if width * height > max_pixels:
        raise FrameTooLarge(f"Frame is {width}x{height} pixels; the limit is {max_pixels} pixels")
    return width, height


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """A JPEG or PNG (told apart by their first bytes) within the caps: its (width, height)."""
    if len(data) > max_bytes:
        raise FrameTooLarge(f"Frame is {len(data)} bytes; the limit is {max_bytes}")
    if data.startswith(PNG_MAGIC):
        return check_png(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if data.startswith(JPEG_MAGIC):
        return check_jpeg(data, max_bytes=max_bytes, max_pixels=max_pixels)
    raise UnsupportedFrame("Frame is not a JPEG or PNG image")


def decode_jpeg(
    data: bytes, *, max_bytes: int, max_pixels: int, min_size: tuple[int, int] | None = None
) -> Image.Image:
    """JPEG bytes -> RGB image, refusing oversized or broken input before decoding pixels.

    With `min_size` (width, height), a frame at least twice as large in both directions is decoded at
    1/2, 1/4 or 1/8 scale in the DCT (libjpeg-turbo), still covering `min_size`: a 1080p camera frame
    for a 512x512 model costs a quarter of the decoding and of the resizing after it."""
    check_jpeg(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        min_width, min_height = min_size or (0, 0)
        # Grey and YCbCr both come out RGB, with a fourth (padding) byte a pixel: see `_rgb_image`.
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGBX", min_width=min_width, min_height=min_height)
    except ValueError as error:
        raise FrameError(f"Frame is a damaged JPEG image ({error})") from None
    return _rgb_image(pixels)


def _rgb_image(rgbx: np.ndarray) -> Image.Image:
    """An RGB image over decoded RGBX pixels (height x width x 4), without copying them: Pillow keeps an
    RGB image as 4 bytes a pixel, so the decoder's output is already its layout. `Image.fromarray` of
    RGB pixels would convert them (about 0.3 ms at 512x512, a tenth of the decode). Pillow's public
    `frombuffer` maps only RGBX-mode images; its internal `map_buffer` maps an RGB one, so it is used
    here, and the copy is the fallback should a Pillow release change it."""
    height, width = rgbx.shape[:2]
    try:
        image = Image.new("RGB", (0, 0))._new(Image.core.map_buffer(rgbx, (width, height), "raw", 0, ("RGB", 0, 1)))
    except (AttributeError, TypeError, ValueError):
        return Image.fromarray(np.ascontiguousarray(rgbx[..., :3]), "RGB")
    image.readonly = 1  # it is the decoder's array: changing it in place would copy it first
    return image


def decode_png(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """PNG bytes -> RGB image (alpha dropped), with the same caps, the size read from the header first."""
    check_png(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:  # its message shows a Python object, not the problem
        raise FrameError("Frame is a damaged PNG image (unreadable header)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise FrameError(f"Frame is a damaged PNG image ({error})") from None


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, min_size: tuple[int, int] | None = None
) -> Image.Image:
    """A JPEG or PNG frame -> RGB image, bounded as above (`min_size`: see `decode_jpeg`)."""
    if data.startswith(PNG_MAGIC):
        return decode_png(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if data.startswith(JPEG_MAGIC):
        return decode_jpeg(data, max_bytes=max_bytes, max_pixels=max_pixels, min_size=min_size)
    check_image(data, max_bytes=max_bytes, max_pixels=max_pixels)  # says why: too large, or not an image
    raise UnsupportedFrame("Frame is not a JPEG or PNG image")


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """The RGB pixels of an image (height x width x 3, uint8), read-only: what the outputs (NDI,
    Syphon) take, converted once per frame and shared between them."""
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    pixels.flags.writeable = False
    return pixels


def encode_jpeg(image: Image.Image | np.ndarray, quality: int) -> bytes:
    """JPEG bytes (4:2:0) of an image or of RGB pixels. An image is encoded by Pillow's libjpeg-turbo
    straight from its own buffer: no copy of the pixels into a numpy array first."""
    if isinstance(image, np.ndarray):
        return simplejpeg.encode_jpeg(image, quality=quality, colorspace="RGB", colorsubsampling="420")
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
    return buffer.getvalue()
