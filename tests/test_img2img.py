"""pipelines/img2img.py on its miniature models, in process: sizes, determinism, the parameters
really reaching the model, at least one denoising step, classifier-free guidance, the prompt cache
and compel weighting. The UNet calls are counted on the real UNet, not a stand-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines
from pipelines.img2img import InputParams

SMALL = {"width": 256, "height": 256}


@pytest.fixture(scope="module")
def pipe():
    return pipelines.load("img2img", tiny=True, dtype="float32")


@pytest.fixture(scope="module")
def unet_calls(pipe):
    """(batch size, timestep) of each of the real UNet's forward calls; clear before each use."""
    calls: list[tuple[int, int]] = []

    def record(module, args, output):
        calls.append((args[0].shape[0], int(args[1])))

    handle = pipe.pipe.unet.register_forward_hook(record)
    yield calls
    handle.remove()


def camera(seed: int = 0, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 90)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


def run(pipe, frame: Image.Image | None = None, **params) -> np.ndarray:
    image = pipe.predict(InputParams(**{**SMALL, **params}), frame if frame is not None else camera())
    return np.asarray(image).astype(np.int16)


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a != b).any())


# --- output -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(256, 256), (320, 256), (256, 384)])
def test_output_has_the_requested_size(pipe, size):
    image = pipe.predict(InputParams(width=size[0], height=size[1]), camera(size=(640, 480)))
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == size


def test_any_input_size_and_mode_is_accepted(pipe):
    # Smaller than the output, portrait, greyscale: cropped and scaled to fill, no error.
    assert pipe.predict(InputParams(**SMALL), camera(size=(100, 60))).size == (256, 256)
    assert pipe.predict(InputParams(**SMALL), camera(size=(240, 320))).size == (256, 256)
    assert pipe.predict(InputParams(**SMALL), camera().convert("L")).size == (256, 256)


def test_same_seed_input_and_params_give_the_same_output(pipe):
    first = run(pipe, seed=42)
    run(pipe, seed=7, prompt="something else")  # other work in between must not leak state
    assert np.array_equal(first, run(pipe, seed=42))


def test_output_is_deterministic_across_pipeline_instances(pipe):
    other = pipelines.load("img2img", tiny=True, dtype="float32")
    assert np.array_equal(run(pipe, seed=5), run(other, seed=5))


def test_seed_prompt_strength_and_input_change_the_output(pipe):
    base = run(pipe, seed=1, prompt="a red cat", strength=0.5)
    assert differs(base, run(pipe, seed=2, prompt="a red cat", strength=0.5))
    assert differs(base, run(pipe, seed=1, prompt="a blue dog", strength=0.5))
    assert differs(base, run(pipe, seed=1, prompt="a red cat", strength=0.9))
    assert differs(base, run(pipe, camera(9), seed=1, prompt="a red cat", strength=0.5))


def test_the_output_follows_the_input(pipe):
    # Low strength keeps the camera's picture: the output is closer to its own input than to another.
    left = Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3)))
    right = left.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = run(pipe, left, strength=0.1, steps=10)
    target_left = np.asarray(left.resize((256, 256)).convert("RGB")).astype(int)
    target_right = np.asarray(right.resize((256, 256)).convert("RGB")).astype(int)
    assert np.abs(out - target_left).mean() < np.abs(out - target_right).mean()


# --- steps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, strength, expected",
    [(4, 0.5, 2), (4, 1.0, 4), (1, 1.0, 1), (1, 0.3, 1), (2, 0.1, 1), (15, 0.1, 1), (1, 0.1, 1), (8, 0.25, 2)],
)
def test_denoising_steps_and_at_least_one(pipe, unet_calls, steps, strength, expected):
    unet_calls.clear()
    run(pipe, steps=steps, strength=strength, guidance_scale=0.5)
    assert [batch for batch, _ in unet_calls] == [1] * expected
    timesteps = [t for _, t in unet_calls]
    assert timesteps == sorted(set(timesteps), reverse=True)  # each step less noisy than the last
    # Denoising starts at the noise level the strength asks for (of 1000 training timesteps), also
    # when steps x strength < 1 and the single step comes from a longer schedule.
    assert abs(timesteps[0] / 1000 - strength) <= 0.05, timesteps


# --- guidance ---------------------------------------------------------------------------------------


def test_lcm_guidance_is_one_unet_pass_at_any_scale(pipe, unet_calls):
    """The LCM-distilled UNet takes the scale as its guidance embedding, as in diffusers: no second
    (classifier-free) pass, whatever the scale."""
    for guidance in (1.5, 1.0):
        unet_calls.clear()
        run(pipe, steps=4, strength=0.5, guidance_scale=guidance)
        assert [batch for batch, _ in unet_calls] == [1, 1]


def test_the_negative_prompt_has_no_effect_on_an_lcm_model(pipe):
    def out(negative: str, guidance: float) -> np.ndarray:
        return run(pipe, prompt="a red cat", negative_prompt=negative, guidance_scale=guidance, strength=1.0, steps=2)

    for guidance in (2.0, 1.5, 0.5):
        assert np.array_equal(out("", guidance), out("blurry, ugly", guidance))


def test_guidance_scale_changes_the_output(pipe):
    # LCM takes the guidance scale as an embedding: it matters even below 1.
    assert differs(run(pipe, guidance_scale=0.0), run(pipe, guidance_scale=0.8))


# --- prompt cache ----------------------------------------------------------------------------------


def test_prompt_embeddings_are_computed_when_the_prompt_changes_not_per_frame(pipe):
    run(pipe, steps=1, prompt="a cache test")
    misses = pipe.prompts.misses
    for seed in range(3):  # new frames, new seeds, new strength: same prompt
        run(pipe, camera(seed + 10), steps=1, prompt="a cache test", seed=seed, strength=0.3 + 0.1 * seed)
    assert pipe.prompts.misses == misses
    run(pipe, steps=1, prompt="another cache test")
    assert pipe.prompts.misses == misses + 1
    run(pipe, steps=1, prompt="another cache test", negative_prompt="blurry")
    assert pipe.prompts.misses == misses + 2
    run(pipe, steps=1, prompt="a cache test")  # back to a recent prompt: still cached
    assert pipe.prompts.misses == misses + 2


def test_text_encoder_runs_only_on_a_prompt_change(pipe):
    calls = []
    handle = pipe.pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        run(pipe, steps=1, prompt="a text encoder test")
        first = len(calls)
        assert first >= 1
        run(pipe, camera(3), steps=1, prompt="a text encoder test", seed=3)
        assert len(calls) == first
    finally:
        handle.remove()


# --- compel --------------------------------------------------------------------------------------


def test_compel_weighting(pipe):
    weighted, plain = pipe.prompts("a (red)++ cat"), pipe.prompts("a red cat")
    # The syntax is parsed, not read as text: weight 1.0 is the plain prompt...
    assert torch.equal(pipe.prompts("a (red)1.0 cat").embeds, plain.embeds)
    # ...and ++ changes the conditioning, which changes the picture.
    assert not torch.allclose(weighted.embeds, plain.embeds)
    assert differs(run(pipe, prompt="a (red)++ cat"), run(pipe, prompt="a red cat"))


def test_long_prompts_are_not_cut_at_77_tokens(pipe):
    # The tiny tokenizer makes one token per character: these two differ only after token 77.
    start = "a" * 100
    assert not torch.equal(pipe.prompts(start + " red").embeds, pipe.prompts(start + " blue").embeds)
