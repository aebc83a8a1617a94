"""--safety-checker: Stable Diffusion's checker (miniature here) between the model and the stream.

The miniature checker (--tiny) flags one recognisable picture, a black-and-white checkerboard of
8 x 8 squares (`tiny_flagged_image()` in pipelines/_tiny.py), and nothing else, as the real one
flags nudity: so a test can see whether frames really went through it. The echo pipeline returns
its input, so what the checker is shown is exactly the camera frame the test sends.

The test process itself loads no model (no torch): the two servers do, side by side."""

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest
import simplejpeg

from bench.live import LiveUser, camera_jpeg, run_server

ECHO = ("--pipeline", "bench.echo_pipeline", "--tiny")
PARAMS = {"width": 256, "height": 256}


def checkerboard(size: int = 256, squares: int = 8) -> np.ndarray:
    """Black and white squares, `squares` x `squares`, the top-left one black: HxWx3 uint8."""
    square = np.arange(size) * squares // size
    white = (square[:, None] + square[None, :]) % 2 == 1
    return np.repeat(np.where(white, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)


FLAGGED = simplejpeg.encode_jpeg(checkerboard(), quality=90)
CAMERA = camera_jpeg(1, 256, 256, noise=2)


@contextlib.contextmanager
def servers(*arg_lists):
    """Real servers, started and stopped side by side: each spends seconds importing and stopping."""
    managers = [run_server(*args) for args in arg_lists]
    with ThreadPoolExecutor(len(managers)) as pool:
        starting = [pool.submit(manager.__enter__) for manager in managers]
        try:
            wait(starting)
            yield [started.result() for started in starting]
        finally:
            up = [manager for manager, started in zip(managers, starting) if started.exception() is None]
            wait([pool.submit(manager.__exit__, None, None, None) for manager in up])


@pytest.fixture(scope="module")
def checked_and_unchecked():
    """The echo pipeline's server with --safety-checker, and without."""
    with servers((*ECHO, "--safety-checker"), ECHO) as both:
        yield both


def first_frame(server, jpeg: bytes) -> np.ndarray:
    """The first output frame of a live session whose camera shows `jpeg`, decoded."""

    async def scenario():
        async with LiveUser(server, PARAMS, jpeg=jpeg) as user:
            [frame] = await user.frames(1)
        return simplejpeg.decode_jpeg(frame)

    return asyncio.run(scenario())


def looks_like(output: np.ndarray, jpeg: bytes) -> bool:
    """The same picture as the camera frame, but for JPEG losses."""
    return output.shape == (256, 256, 3) and np.abs(output.astype(int) - simplejpeg.decode_jpeg(jpeg)).mean() < 4


def test_with_the_checker_flagged_frames_stream_black_and_others_unchanged(checked_and_unchecked):
    checked, _ = checked_and_unchecked
    flagged = first_frame(checked, FLAGGED)
    assert flagged.shape == (256, 256, 3) and flagged.max() == 0
    assert looks_like(first_frame(checked, CAMERA), CAMERA)


def test_without_the_checker_the_same_frame_streams_unchanged(checked_and_unchecked):
    _, unchecked = checked_and_unchecked
    assert looks_like(first_frame(unchecked, FLAGGED), FLAGGED)
