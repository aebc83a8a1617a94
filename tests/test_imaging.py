"""server/imaging.py: bounded JPEG decoding to RGB, and JPEG encoding of the output."""

from __future__ import annotations

import gc
import io
import time

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from bench.live import camera_jpeg, jpeg_size
from server.imaging import FrameError, decode_jpeg, encode_jpeg

BIG = {"max_bytes": 10_000_000, "max_pixels": 10_000_000}


def with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF0) claiming another size; the data stays small."""
    sof = jpeg.find(b"\xff\xc0")
    assert sof > 0
    return jpeg[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9 :]


# --- decoding ---------------------------------------------------------------------------------------


def test_decodes_to_rgb_of_the_right_size():
    jpeg = camera_jpeg(1, width=320, height=240)
    image = decode_jpeg(jpeg, **BIG)
    assert image.mode == "RGB" and image.size == (320, 240)
    # The right pixels, not just the right shape: the same as another decoder gives.
    reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    assert np.abs(np.asarray(image).astype(int) - reference).mean() < 2


def test_decoded_image_is_the_decoders_pixels_and_behaves_like_any_rgb_image():
    jpeg = camera_jpeg(3, width=320, height=240)
    image = decode_jpeg(jpeg, **BIG)
    gc.collect()  # the image keeps the decoder's array alive
    assert np.array_equal(np.asarray(image), simplejpeg.decode_jpeg(jpeg, colorspace="RGB"))
    assert image.readonly  # the decoder's buffer, not a copy (Pillow's internal mapping still works)
    assert image.resize((64, 48)).size == (64, 48) and image.crop((0, 0, 10, 10)).getpixel((0, 0)) == image.getpixel((0, 0))
    assert np.array_equal(np.asarray(image.convert("L")), np.asarray(Image.fromarray(np.asarray(image)).convert("L")))
    image.paste((1, 2, 3), (0, 0, 8, 8))  # changing it in place works on its own copy
    assert image.getpixel((0, 0)) == (1, 2, 3) and image.getpixel((9, 9)) != (1, 2, 3)
    assert decode_jpeg(encode_jpeg(image, 90), **BIG).size == (320, 240)


def test_portrait_frame_keeps_its_orientation():
    assert decode_jpeg(camera_jpeg(2, width=240, height=320), **BIG).size == (240, 320)


def test_greyscale_jpeg_comes_out_rgb():
    grey = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (120, 1, 1))  # a horizontal ramp
    jpeg = simplejpeg.encode_jpeg(grey, quality=95, colorspace="GRAY")
    image = decode_jpeg(jpeg, **BIG)
    assert image.mode == "RGB" and image.size == (200, 120)
    pixels = np.asarray(image).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert abs(pixels[60, 150, 0] - 150) <= 3


def test_jpeg_written_by_pil_decodes():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 30)).save(buffer, "JPEG", quality=90)
    image = decode_jpeg(buffer.getvalue(), **BIG)
    assert image.size == (64, 48)
    r, g, b = image.getpixel((32, 24))
    assert r > 150 and g < 60 and b < 80


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"GIF89a" + bytes(100), b"\x00" * 1000, b"\xff\xd8", b'{"status": "next_frame"}'],
    ids=["empty", "text", "gif", "zeros", "two-bytes", "json"],
)
def test_refuses_what_is_not_a_jpeg(data):
    with pytest.raises(FrameError, match="not a"):
        decode_jpeg(data, **BIG)


def test_refuses_png():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    with pytest.raises(FrameError, match="not a JPEG"):
        decode_jpeg(buffer.getvalue(), **BIG)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999, 40], ids=["half", "most", "no-end-marker", "header-only"])
def test_refuses_truncated_jpeg(keep):
    jpeg = camera_jpeg(3)
    cut = jpeg[: int(len(jpeg) * keep)] if keep < 1 else jpeg[: int(keep)]
    with pytest.raises(FrameError):
        decode_jpeg(cut, **BIG)


def test_refuses_garbage_after_a_jpeg_header():
    jpeg = camera_jpeg(4)
    header_end = jpeg.find(b"\xff\xda")  # start of scan: corrupt everything after it
    corrupted = jpeg[: header_end + 14] + bytes(np.random.default_rng(0).integers(0, 255, 2000, dtype=np.uint8))
    with pytest.raises(FrameError):
        decode_jpeg(corrupted, **BIG)


def test_byte_cap():
    jpeg = camera_jpeg(5)
    assert decode_jpeg(jpeg, max_bytes=len(jpeg), max_pixels=10**7).size == (320, 240)
    with pytest.raises(FrameError, match=f"{len(jpeg)} bytes.*limit is {len(jpeg) - 1}"):
        decode_jpeg(jpeg, max_bytes=len(jpeg) - 1, max_pixels=10**7)
    # Checked first: a huge blob is refused without being looked at.
    with pytest.raises(FrameError, match="bytes"):
        decode_jpeg(b"\xff\xd8\xff" + bytes(20_000_000), max_bytes=4_000_000, max_pixels=10**7)


def test_pixel_cap():
    jpeg = camera_jpeg(6, width=320, height=240)
    assert decode_jpeg(jpeg, max_bytes=10**7, max_pixels=320 * 240).size == (320, 240)
    with pytest.raises(FrameError, match="320x240.*limit is 76799"):
        decode_jpeg(jpeg, max_bytes=10**7, max_pixels=320 * 240 - 1)


def test_pixel_cap_is_checked_from_the_header_without_decoding():
    # A small file that declares 60000x60000 pixels (3.6 gigapixels, 10 GB of RGB): refused from its
    # header alone. Its scan data is for 320x240, so a decoder would fail on it differently.
    small = camera_jpeg(7, width=320, height=240)
    bomb = with_declared_size(small, 60000, 60000)
    assert len(bomb) == len(small) and jpeg_size(bomb) == (60000, 60000)
    started = time.perf_counter()
    with pytest.raises(FrameError, match="60000x60000 pixels"):
        decode_jpeg(bomb, max_bytes=10**7, max_pixels=4_194_304)
    assert time.perf_counter() - started < 0.5


def test_pixel_cap_counts_width_times_height():
    # 4000x1000 is 4 megapixels: over a 3.9 MP cap although neither side is large.
    bomb = with_declared_size(camera_jpeg(8), 4000, 1000)
    with pytest.raises(FrameError, match="4000x1000"):
        decode_jpeg(bomb, max_bytes=10**7, max_pixels=3_900_000)


def test_frame_error_is_a_value_error_with_a_client_message():
    with pytest.raises(ValueError) as error:
        decode_jpeg(b"nope", **BIG)
    assert str(error.value) and "\n" not in str(error.value)


# --- encoding ---------------------------------------------------------------------------------------


def test_encode_gives_a_jpeg_of_the_same_size_and_content():
    rng = np.random.default_rng(0)
    pixels = np.clip(np.mgrid[0:192, 0:256][1][..., None] + rng.normal(0, 5, (192, 256, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    jpeg = encode_jpeg(image, quality=90)
    assert jpeg.startswith(b"\xff\xd8\xff") and jpeg.endswith(b"\xff\xd9")
    assert jpeg_size(jpeg) == (256, 192)
    decoded = Image.open(io.BytesIO(jpeg))
    assert decoded.format == "JPEG" and decoded.size == (256, 192) and decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded).astype(int) - pixels.astype(int)).mean() < 6
    # And it goes back through the server's own decoder.
    assert decode_jpeg(jpeg, **BIG).size == (256, 192)


def test_encode_quality_is_applied():
    pixels = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    low, high = encode_jpeg(image, quality=20), encode_jpeg(image, quality=95)
    assert len(low) < len(high) / 2


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_encode_accepts_other_modes(mode):
    jpeg = encode_jpeg(Image.new(mode, (64, 32)), quality=85)
    assert jpeg_size(jpeg) == (64, 32)


def test_a_large_frame_is_decoded_no_larger_than_the_model_needs():
    import numpy as np
    import simplejpeg

    from server.imaging import decode_jpeg

    full_hd = simplejpeg.encode_jpeg(np.full((1080, 1920, 3), 120, np.uint8))
    limits = {"max_bytes": 10_000_000, "max_pixels": 10_000_000}
    assert decode_jpeg(full_hd, **limits).size == (1920, 1080)
    assert decode_jpeg(full_hd, **limits, min_size=(512, 512)).size == (960, 540)  # still covers 512x512
    assert decode_jpeg(full_hd, **limits, min_size=(200, 100)).size == (240, 135)


def test_decoding_still_works_should_pillow_drop_its_buffer_mapping(monkeypatch):
    jpeg = camera_jpeg(4, width=320, height=240)
    monkeypatch.delattr(Image.core, "map_buffer")
    image = decode_jpeg(jpeg, **BIG)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), simplejpeg.decode_jpeg(jpeg, colorspace="RGB"))
