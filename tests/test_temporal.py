"""Temporal consistency (pipelines/_temporal.py) on the miniature img2img pipeline: off, nothing
changes; on, a still camera with sensor noise gives a steadier output; a stream's memory is bounded
and its own (batching included); and through the server each session keeps its own."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image

import pipelines
from bench.live import LiveUser, camera_pixels, run_server

SIZE = {"width": 256, "height": 256}


@pytest.fixture(scope="module")
def pipe() -> Any:
    return pipelines.load("img2img", tiny=True, dtype="float32")


def noisy_still(count: int, seed: int = 0, noise: float = 6.0) -> list[Image.Image]:
    """A still scene as a camera sees it: the same picture, fresh sensor noise in every frame."""
    scene = camera_pixels(seed, 256, 256, noise=0).astype(float)
    rng = np.random.default_rng(seed + 100)
    return [Image.fromarray(np.clip(scene + rng.normal(0, noise, scene.shape), 0, 255).astype(np.uint8)) for _ in range(count)]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def run_stream(pipe: Any, frames: list[Image.Image], temporal: float, memory: Any = "new", **values: Any) -> list[np.ndarray]:
    memory = pipe.new_memory() if memory == "new" else memory
    params = pipe.InputParams(**SIZE, temporal_consistency=temporal, **values)
    return [pixels(pipe.predict(params, frame, memory)) for frame in frames]


def test_off_gives_exactly_the_frames_of_a_pipeline_without_memory(pipe):
    frames = noisy_still(4)
    with_memory = run_stream(pipe, frames, 0.0)
    without = [pixels(pipe.predict(pipe.InputParams(**SIZE), frame)) for frame in frames]
    for a, b in zip(with_memory, without):
        assert np.array_equal(a, b)


def test_a_still_noisy_camera_gives_a_steadier_output_with_it_on(pipe):
    frames = noisy_still(8)

    def flicker(outputs: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(a - b).mean() for a, b in zip(outputs, outputs[1:])]))

    off, half, on = (flicker(run_stream(pipe, frames, temporal)) for temporal in (0.0, 0.5, 1.0))
    assert on < off and half < off, (off, half, on)


def test_the_first_frame_and_a_changed_prompt_start_afresh(pipe):
    frames = noisy_still(3)
    memory = pipe.new_memory()
    first = run_stream(pipe, frames[:1], 1.0, memory)[0]
    assert np.array_equal(first, run_stream(pipe, frames[:1], 0.0)[0])  # nothing to carry over yet
    run_stream(pipe, frames[1:2], 1.0, memory)
    changed = run_stream(pipe, frames[2:3], 1.0, memory, prompt="a new prompt")[0]
    fresh = run_stream(pipe, frames[2:3], 1.0, "new", prompt="a new prompt")[0]
    assert np.array_equal(changed, fresh)  # the memory was of another prompt: forgotten


def test_a_streams_memory_stays_the_same_size_over_1000_frames(pipe):
    # 128x128 (below the parameters' minimum, built without validation) keeps 1000 frames quick.
    params = pipe.InputParams.model_construct(
        **{**pipe.InputParams().model_dump(), "width": 128, "height": 128, "steps": 2, "temporal_consistency": 1.0}
    )
    rng = np.random.default_rng(0)
    scene = camera_pixels(2, 128, 128, noise=0).astype(float)
    memory = pipe.new_memory()
    sizes = set()
    for index in range(1000):
        frame = Image.fromarray(np.clip(scene + rng.normal(0, 6, scene.shape), 0, 255).astype(np.uint8))
        pipe.predict(params, frame, memory)
        if index >= 1:
            sizes.add((memory.nbytes(), len(memory.bank)))
    assert len(sizes) == 1, sizes
    (nbytes, entries), = sizes
    assert entries > 0 and nbytes < 4 * 2**20


def test_a_streams_memory_never_reaches_another_streams_frames_in_a_batch(pipe):
    first_frames, second_frames = noisy_still(3, seed=1), noisy_still(3, seed=2)
    first_params = pipe.InputParams(**SIZE, temporal_consistency=1.0, prompt="a red house", seed=1)
    second_params = pipe.InputParams(**SIZE, temporal_consistency=1.0, prompt="a blue whale", seed=2)
    # Alone: each stream on its own, frame after frame.
    alone_first = run_stream(pipe, first_frames, 1.0, prompt="a red house", seed=1)
    alone_second = run_stream(pipe, second_frames, 1.0, prompt="a blue whale", seed=2)
    # Together: the two streams' frames as one batch each time.
    first_memory, second_memory = pipe.new_memory(), pipe.new_memory()
    for index in range(3):
        together = pipe.predict_batch(
            [first_params, second_params], [first_frames[index], second_frames[index]], [first_memory, second_memory]
        )
        for output, alone in zip(together, (alone_first[index], alone_second[index])):
            difference = np.abs(pixels(output) - alone)
            assert difference.mean() < 0.5 and difference.max() <= 16, index  # batched maths rounds a little differently


def test_each_session_of_the_server_keeps_its_own_memory():
    """Through the server: with it off, a still camera gives the same frame every time; on, the
    session's later frames carry its first over; two sessions batched together do not share theirs."""
    first_still, second_still = (simplejpeg.encode_jpeg(camera_pixels(seed, 256, 256, noise=0)) for seed in (1, 2))
    on = {**SIZE, "strength": 0.5, "temporal_consistency": 1.0}

    async def frames(server, params: dict[str, Any], jpeg: bytes, count: int) -> list[bytes]:
        async with LiveUser(server, params, jpeg=jpeg) as user:
            received = await user.frames(count)
        assert user.messages == []
        return received

    async def together(server) -> tuple[list[bytes], list[bytes]]:
        async with (
            LiveUser(server, {**on, "seed": 1}, jpeg=first_still) as first,
            LiveUser(server, {**on, "seed": 2}, jpeg=second_still) as second,
        ):
            return await asyncio.gather(first.frames(3), second.frames(3))

    with run_server("--tiny", "--max-batch", "2", "--dtype", "float32") as server:  # bfloat16 rounds batches apart
        off_frames = asyncio.run(frames(server, {**on, "temporal_consistency": 0.0, "seed": 1}, first_still, 3))
        on_frames = asyncio.run(frames(server, {**on, "seed": 1}, first_still, 3))
        second_alone = asyncio.run(frames(server, {**on, "seed": 2}, second_still, 1))
        batched_first, batched_second = asyncio.run(together(server))
    assert len(set(off_frames)) == 1  # the same input and seed: the same output
    assert on_frames[0] == off_frames[0] and len(set(on_frames)) > 1  # nothing to carry over, then something
    for batched, alone in ((batched_second[0], second_alone[0]), (batched_first[0], on_frames[0])):
        difference = np.abs(decoded(batched) - decoded(alone))  # each session's first frame: nothing from the other
        assert difference.mean() < 1.0, difference.mean()


def decoded(jpeg: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(jpeg).astype(np.int16)
