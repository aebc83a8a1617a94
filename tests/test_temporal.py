"""Temporal consistency (pipelines/_temporal.py) on the miniature pipelines: off, nothing changes;
on, a still camera with sensor noise gives a steadier output; a stream's memory is bounded, its size
known before the first frame and cappable, and its own (batching included); a subject moving over a
still background is gated where it moves; a new scene (or the caller's reset) starts the stream
afresh; and through the server each session keeps its own, also in a batch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import pipelines
from bench.live import Client, LiveUser, camera_pixels, jpeg_size, mjpeg_frames, run_server, take
from bench.temporal import texture
from pipelines._temporal import (
    FEEDBACK,
    MIN_BANK_WEIGHT,
    FeatureBank,
    bank_weight,
    feedback_share,
    is_scene_cut,
    motion,
)

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
    # 64x64 (below the parameters' minimum, built without validation) keeps 1000 frames quick; the
    # middle block's self-attention is still banked.
    params = pipe.InputParams.model_construct(
        **{**pipe.InputParams().model_dump(), "width": 64, "height": 64, "steps": 2, "temporal_consistency": 1.0}
    )
    rng = np.random.default_rng(0)
    scene = camera_pixels(2, 64, 64, noise=0).astype(float)
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
    assert nbytes == pipe.memory_bytes(params)  # what was said before the first frame


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


# --- memory counted before it is used -------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sd_turbo() -> Any:
    return pipelines.load("img2img_sd_turbo", tiny=True, dtype="float32")


@pytest.fixture(scope="module")
def sdxl() -> Any:
    return pipelines.load("img2img_sdxl_lcm_lora", tiny=True, dtype="float32")


@pytest.mark.parametrize(
    ("fixture", "values", "banked"),
    [
        ("pipe", {"width": 256, "height": 256}, 4),  # LCM, 4 steps at strength 0.5: 2 steps run
        ("pipe", {"width": 512, "height": 384, "steps": 7, "strength": 0.3}, 4),
        ("pipe", {"width": 256, "height": 256, "guidance_scale": 1.5}, 4),  # LCM: guidance is an embedding, one row
        ("pipe", {"width": 576, "height": 576}, 0),  # its attention at 36x36 = 1296 tokens: the latents alone
        ("sd_turbo", {"width": 256, "height": 256, "steps": 1, "strength": 0.5}, 4),
        ("sd_turbo", {"width": 256, "height": 256, "steps": 3, "strength": 0.7, "guidance_scale": 1.5}, 4),  # 2 rows
        ("sdxl", {"width": 512, "height": 512}, 8),
        ("sdxl", {"width": 512, "height": 512, "steps": 2, "guidance_scale": 1.5}, 8),
        ("sdxl", {"width": 576, "height": 512}, 0),
    ],
)
def test_a_streams_memory_is_known_before_its_first_frame(request, fixture, values, banked):
    pipeline = request.getfixturevalue(fixture)
    params = pipeline.InputParams(**values, temporal_consistency=1.0)
    needed = pipeline.memory_bytes(params)
    assert len(pipeline.memory_plan(params).layers) == banked
    memory = pipeline.new_memory()
    for frame in noisy_still(2):
        pipeline.predict(params, frame, memory)
        assert memory.nbytes() == needed  # from the first frame on, exactly
    # Asked while the pipeline has a schedule set (the server asks from another thread): it touches nothing.
    timesteps = pipeline.pipe.scheduler.timesteps.clone()
    assert pipeline.memory_bytes(params.model_copy(update={"steps": 9, "strength": 0.9})) > 0
    assert torch.equal(pipeline.pipe.scheduler.timesteps, timesteps)


def test_off_holds_nothing_and_says_so(pipe):
    params = pipe.InputParams(**SIZE)
    memory = pipe.new_memory()
    pipe.predict(params, noisy_still(1)[0], memory)
    assert pipe.memory_bytes(params) == 0 == memory.nbytes()


def test_the_estimate_for_full_size_sd15_is_what_the_benchmark_measured():
    """bench/temporal.py ran full-size SD1.5 (random weights) and recorded each stream's memory in
    docs/bench/temporal.json; the plan of the same UNet, built without weights (meta device), says the
    same to the byte: 11 of its 16 self-attention layers banked at 512x512 (not the 64x64 ones)."""
    from diffusers import UNet2DConditionModel

    from bench.full_size import SD15_UNET
    from bench.model_path import CASES
    from pipelines._denoise import img2img_step_count

    run = json.loads((REPO_ROOT / "docs" / "bench" / "temporal.json").read_text())
    settings, case = run["settings"], CASES["img2img"]
    side = int(settings["size"].split("x")[0])
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET, time_cond_proj_dim=256)
    plan = FeatureBank(unet).plan(
        (side // 8, side // 8), steps=img2img_step_count(case.steps, case.strength), rows=1,
        element_size=torch.empty((), dtype=getattr(torch, settings["dtype"])).element_size(), channels=4,
    )
    assert {result["settings"]["1"]["memory_bytes"] for result in run["results"]} == {plan.nbytes}
    assert (len(plan.layers), plan.bankable) == (11, 11) and len(FeatureBank(unet).layers) == 16


def test_a_capped_memory_banks_fewer_layers_and_holds_what_was_said(pipe):
    params = pipe.InputParams(**SIZE, temporal_consistency=1.0)
    needed = pipe.memory_bytes(params)
    least = pipe.memory_bytes(params, max_bytes=0)  # the two latents: latent feedback alone
    budget = (least + needed) // 2
    lowered = pipe.memory_bytes(params, max_bytes=budget)
    assert 0 < least < lowered <= budget < needed
    assert 0 < len(pipe.memory_plan(params, budget).layers) < len(pipe.memory_plan(params).layers)
    frames = noisy_still(3)
    capped = pipe.new_memory(max_bytes=budget)
    for frame in frames:
        pipe.predict(params, frame, capped)
        assert capped.nbytes() == lowered
    # Lowered while the stream runs: its next frame drops what no longer fits.
    memory = pipe.new_memory()
    for frame in frames[:2]:
        pipe.predict(params, frame, memory)
    assert memory.nbytes() == needed
    memory.max_bytes = 0
    pipe.predict(params, frames[2], memory)
    assert memory.nbytes() == least and memory.bank == {}


# --- gating by region, and a new scene ------------------------------------------------------------


def test_a_subject_moving_over_a_still_background_is_gated_where_it_moves():
    """Constructed latents: a still background with sensor noise, an 8x8 subject moving 4 latent
    pixels to the right. Where the subject was or is, no latent feedback and the bank's keys masked
    out (at a 16x16 layer too); on the background, both as on a still picture but for the noise."""
    generator = torch.Generator().manual_seed(0)
    background = torch.randn(1, 4, 32, 32, generator=generator)
    subject = 2 * torch.randn(1, 4, 8, 8, generator=generator)

    def frame(left: int) -> torch.Tensor:
        latent = background.clone()
        latent[..., 12:20, left : left + 8] = subject
        return latent + 0.1 * torch.randn(latent.shape, generator=generator)

    previous, current = frame(4), frame(8)
    moving = motion(current, previous)
    assert not is_scene_cut(current, previous)
    where = torch.zeros(32, 32, dtype=torch.bool)
    where[12:20, 4:16] = True  # the subject, then and now
    away = torch.ones(32, 32, dtype=torch.bool)
    away[9:23, 1:19] = False  # the background, 3 pixels clear of it
    share = feedback_share(moving, 1.0)[0, 0]
    assert share[where].max() < 0.05 * FEEDBACK and share[away].min() > 0.5 * FEEDBACK, (share[where], share[away])
    weight = bank_weight(moving, (16, 16), 1.0).view(16, 16)  # a layer at half the latent's resolution
    assert weight[6:10, 2:8].max() <= 2 * MIN_BANK_WEIGHT
    away16 = torch.ones(16, 16, dtype=torch.bool)
    away16[4:12, 0:10] = False
    assert weight[away16].min() > 0.95  # the noise keeps the bank: it is matched by content
    # A half-strength stream: the same gating, scaled.
    assert torch.allclose(feedback_share(moving, 0.5), feedback_share(moving, 1.0) / 2)


def test_a_new_scene_starts_the_stream_afresh_and_motion_within_one_does_not(pipe):
    """A textured disc moving over a still background is motion within a scene: the stream keeps its
    memory (its frames differ from a fresh stream's). The page then switching to another source (a
    camera scene) is a new scene: that first frame is exactly a fresh stream's. So is the frame after
    the caller's own reset()."""
    from bench.temporal import object_clip

    params = pipe.InputParams(**SIZE, temporal_consistency=1.0)

    def fresh(frame: Image.Image) -> np.ndarray:
        return pixels(pipe.predict(params, frame, pipe.new_memory()))

    memory = pipe.new_memory()
    moving = [Image.fromarray(frame) for frame in object_clip(256, 3).frames]
    outputs = [pixels(pipe.predict(params, frame, memory)) for frame in moving]
    assert memory.scene_cuts == 0 and not np.array_equal(outputs[-1], fresh(moving[-1]))
    camera = noisy_still(3)
    assert np.array_equal(pixels(pipe.predict(params, camera[0], memory)), fresh(camera[0]))
    assert memory.scene_cuts == 1
    assert not np.array_equal(pixels(pipe.predict(params, camera[1], memory)), fresh(camera[1]))
    assert memory.scene_cuts == 1  # sensor noise is not a new scene
    memory.reset()  # the server: the client says its source changed
    assert np.array_equal(pixels(pipe.predict(params, camera[2], memory)), fresh(camera[2]))


def test_a_cut_to_another_picture_is_seen_as_one(pipe):
    """Unrelated pictures (a camera-like gradient, textures) are cuts; the same picture with sensor
    noise, or panned by a few pixels, is not."""
    from pipelines._denoise import encode_latents, images_to_tensor

    def encoded(array: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            frame = images_to_tensor([Image.fromarray(array)], torch.device("cpu"), torch.float32)
            return encode_latents(pipe.pipe.vae, frame)

    camera = encoded(np.asarray(noisy_still(1)[0]))
    textured, other = encoded(texture(256, 256, 1)), encoded(texture(256, 256, 7))
    assert is_scene_cut(textured, camera) and is_scene_cut(camera, textured) and is_scene_cut(other, textured)
    wide = texture(256, 264, 1)
    assert not is_scene_cut(encoded(np.asarray(noisy_still(2)[1])), encoded(np.asarray(noisy_still(2)[0])))
    assert not is_scene_cut(encoded(wide[:, 4:260]), encoded(wide[:, :256]))


def test_each_session_of_the_server_keeps_its_own_memory():
    """Through the server, sessions in lockstep (each sends one frame, all outputs come back, then the
    next): with it off, a still camera gives the same frame every time; on, a session's later frames
    carry its first over; and two sessions whose frames run two to a batch (the server's health says
    so) each get what they get alone, later frames included: neither reaches the other's memory."""
    first_still, second_still = (simplejpeg.encode_jpeg(camera_pixels(seed, 256, 256, noise=0)) for seed in (1, 2))
    on = {**SIZE, "strength": 0.5, "temporal_consistency": 1.0}
    first, second = ({**on, "seed": 1}, first_still), ({**on, "seed": 2}, second_still)
    # --batch-wait-ms: the worker waits up to a second for the other session's frame, so a busy machine
    # cannot make the two take turns instead. float32: bfloat16 rounds batches apart.
    with run_server("--tiny", "--max-batch", "2", "--batch-wait-ms", "1000", "--dtype", "float32") as server:
        off = asyncio.run(lockstep(server, [({**on, "temporal_consistency": 0.0, "seed": 1}, first_still)], 3))[0]
        first_alone = asyncio.run(lockstep(server, [first], 3))[0]
        second_alone = asyncio.run(lockstep(server, [second], 3))[0]
        before = server.health()
        first_batched, second_batched = asyncio.run(lockstep(server, [first, second], 3))
        after = server.health()  # every frame has come back: nothing more is generated
    assert len(set(off)) == 1  # the same input and seed: the same output
    assert first_alone[0] == off[0] and len(set(first_alone)) > 1  # nothing to carry over, then something
    assert after["frames_generated"] - before["frames_generated"] == 6
    assert after["batches"] - before["batches"] == 3  # each round's two frames ran as one batch
    for index, (batched, alone) in enumerate(zip(first_batched + second_batched, first_alone + second_alone)):
        difference = np.abs(decoded(batched) - decoded(alone))  # batched maths rounds a little differently
        assert difference.mean() < 1.0, (index, difference.mean())


async def lockstep(server: Any, users: list[tuple[dict[str, Any], bytes]], rounds: int) -> list[list[bytes]]:
    """Sessions, one per (params, jpeg), whose output streams are all open before any of them sends a
    frame; then, `rounds` times, each sends one frame and all the outputs are read. The server asks a
    session for its next frame only once its last one is shown, so output k is the k-th frame it made."""
    server.wait_for(lambda health: health["streams"] == 0)  # the sessions before these have gone
    clients = [Client(server) for _ in users]
    http = httpx.AsyncClient(timeout=60)
    streams = [mjpeg_frames(server, client.user_id, http) for client in clients]
    try:
        for client in clients:
            assert (await client.connect())["status"] == "connected"
        outputs: list[list[bytes]] = [[] for _ in users]
        for round_ in range(rounds):
            readers = [asyncio.create_task(take(stream, 1)) for stream in streams]
            if round_ == 0:  # the readers open the streams
                await asyncio.to_thread(server.wait_for, lambda health: health["streams"] == len(users))
            await asyncio.gather(*(client.pump(params, 1, jpeg) for client, (params, jpeg) in zip(clients, users)))
            for output, frames in zip(outputs, await asyncio.gather(*readers)):
                output.extend(frames)
        assert all(client.messages == [] for client in clients), [client.messages for client in clients]
        return outputs
    finally:
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
        await http.aclose()
        for client in clients:
            await client.close()


def decoded(jpeg: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(jpeg).astype(np.int16)


# --- through the server: the memory budget, and a client's new input ------------------------------------

BUDGET_MB = 1.5  # a stream at 256x256 holds 1.03 MiB here: one fits in full, a second only lowered


@pytest.fixture(scope="module")
def budget_server():
    with run_server("--tiny", "--temporal-memory-mb", str(BUDGET_MB), "--dtype", "float32") as server:
        yield server


def test_the_memory_budget_lowers_or_turns_off_a_sessions_memory_and_says_so(budget_server):
    """Two sessions at 256x256 (1.03 MiB each in full) on a 1.5 MiB budget: the first holds its memory
    in full; the second hears it is lowered, and off at 1024x1024 (not even its latents fit), while its
    frames go on; once the first leaves, it is on in full again. Health and metrics show what is held."""
    on = {**SIZE, "temporal_consistency": 1.0}

    async def scenario() -> None:
        first = LiveUser(budget_server, dict(on), jpeg=simplejpeg.encode_jpeg(camera_pixels(1, 256, 256)))
        second = LiveUser(budget_server, dict(on), jpeg=simplejpeg.encode_jpeg(camera_pixels(2, 256, 256)))
        await first.__aenter__()
        try:
            await first.frames(2)
            held = (await asyncio.to_thread(budget_server.health))["temporal_memory_mb"]
            assert 1.0 < held <= BUDGET_MB and first.messages == []
            async with second:
                await second.frames(2)
                assert notices(second) == ["lowered"], second.messages
                health = await asyncio.to_thread(budget_server.health)
                assert 1.0 < health["temporal_memory_mb"] <= health["temporal_memory_budget_mb"] == BUDGET_MB
                metrics = (await asyncio.to_thread(httpx.get, f"{budget_server.http}/metrics")).text
                samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
                assert samples["live_diffusion_temporal_memory_budget_bytes"] == BUDGET_MB * 2**20
                assert 2**20 < samples["live_diffusion_temporal_memory_bytes"] <= BUDGET_MB * 2**20
                second.params.update(width=1024, height=1024)
                assert await frame_of_size(second, 1024)
                assert notices(second) == ["lowered", "off"]
                await first.__aexit__(None, None, None)
                await asyncio.to_thread(budget_server.wait_for_users, 1)
                second.params.update(SIZE)
                assert await frame_of_size(second, 256)
                await second.frames(1)  # the message comes before the frame after the one that changed size
                assert notices(second) == ["lowered", "off", "full"]
        finally:
            await first.__aexit__(None, None, None)

    asyncio.run(scenario())


def notices(user: LiveUser) -> list[str]:
    kinds = {"lowered": "lowered", "off": "is off", "full": "in full again"}
    said = [m["message"] for m in user.messages if m["status"] == "info"]
    return [kind for message in said for kind, words in kinds.items() if words in message]


async def frame_of_size(user: LiveUser, size: int, tries: int = 10) -> bool:
    for _ in range(tries):  # the frame in flight when the size changed may still come at the old size
        if jpeg_size((await user.frames(1))[0]) == (size, size):
            return True
    return False


def test_a_client_saying_new_source_starts_its_stream_afresh(budget_server):
    """A session shows scene A, then scene A a little changed (no scene cut): its frame of the changed
    scene carries A over, unless the client says new_source, and then it is exactly what a new session
    makes of that frame."""
    scene = camera_pixels(5, 256, 256, noise=0)
    changed = np.clip(scene.astype(int) + 12, 0, 255).astype(np.uint8)
    a, b = simplejpeg.encode_jpeg(scene), simplejpeg.encode_jpeg(changed)
    on = {**SIZE, "temporal_consistency": 1.0, "strength": 0.5}

    async def stream(frames: list[tuple[bytes, bool]]) -> list[bytes]:
        client = Client(budget_server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            outputs = mjpeg_frames(budget_server, client.user_id, http)
            shown = []
            try:
                for jpeg, new_source in frames:
                    reader = asyncio.create_task(take(outputs, 1))
                    await client.recv_until("send_frame")
                    await client.ws.send(json.dumps({"status": "next_frame", **({"new_source": True} if new_source else {})}))
                    await client.ws.send(json.dumps(on))
                    await client.ws.send(jpeg)
                    shown.extend(await reader)
            finally:
                await outputs.aclose()  # type: ignore[attr-defined]
                await client.close()
        return shown

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        carried = await stream([(a, False), (a, False), (b, False)])
        afresh = await stream([(a, False), (a, False), (b, True)])
        fresh = await stream([(b, False)])
        return carried, afresh, fresh

    carried, afresh, fresh = asyncio.run(scenario())
    assert afresh[2] == fresh[0]
    assert np.abs(decoded(carried[2]) - decoded(fresh[0])).mean() > 1.0  # without it, A carried over
