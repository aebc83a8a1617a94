"""The project's denoising loop (pipelines/_denoise.py, run by every pipeline's `predict` /
`predict_batch`) against the stock diffusers pipelines called on the very same components.

Each comparison runs the project's pipeline, then a stock diffusers pipeline (`ours.pipe` itself, the
diffusers pipeline object the module built, or a stock class built from `ours.pipe.components`) with
the same seed (a `torch.Generator` seeded the same; a list of them for a batch) and the same prompt
embeddings (taken from `ours.prompts`, so text encoding is out of the comparison), at settings where
the two mean the same thing. The uint8 images must agree within 1/255: the only rounding the two do
differently is the final conversion ((x + 1) * 127.5 against (x / 2 + 0.5) * 255).

Every UNet call of both runs is recorded (a forward pre-hook with kwargs on `pipe.unet`: timestep,
latent input, encoder states, timestep_cond, SDXL's added conditioning, ControlNet residuals), so a
failure says at which call and in which input the two runs part.

Where the two differ by design, and so are not compared here:

- Strength between the grid points (e.g. 0.3 at 4 steps). diffusers runs the last int(n * strength)
  timesteps of the n-step schedule and starts at the first of them, so strength only moves in steps of
  1/n; the project runs as many steps but starts at the noise level strength asks for (LCM: snapped to
  the 50-step grid it was distilled on), so strength stays a continuous knob. The two coincide where
  n * strength is an integer: 0.25, 0.5, 0.75 and 1.0 at 4 steps (LCM), 0.5 and 1.0 at 2 steps (Euler).
- Few steps at low strength, e.g. 1-step SD-Turbo below strength 1. diffusers runs int(n * strength)
  steps: none at 1 step and strength 0.5 (its schedule is empty and the call fails with "stack expects
  a non-empty TensorList"), so there one asks it for ceil(1 / strength) steps of a longer schedule; the
  project lengthens the schedule itself until one step runs, and starts at the strength's noise level.
  Compared only where that lands on diffusers' grid: 1 step at 0.5 is diffusers' 2 steps at 0.5
  (timestep 499); 1 step at 0.3 (timestep 299 for the project, 249 for diffusers' 4-step tail) is not.
- Classifier-free guidance with an LCM-distilled UNet (img2img, txt2img, controlnet_canny). As in
  diffusers' SD pipelines, such a UNet takes the guidance scale only as its guidance embedding (w - 1)
  and never runs CFG, so the negative prompt has no effect (checked below). The stock ControlNet
  img2img pipeline is the exception: it omits the guidance embedding (supplied here by a UNet pre-hook,
  as diffusers' LCM pipelines compute it) and runs CFG whenever guidance > 1 even on an LCM UNet, so it
  is compared at guidance <= 1 only.
- LatentConsistencyModelImg2ImgPipeline below strength 1 with plain `num_inference_steps`: it squeezes
  all n steps into the first strength * 50 timesteps of the distillation grid (4 steps at 0.5:
  499, 379, 259, 139), where the project runs int(n * strength) steps of the full n-step schedule. Given
  the full schedule as custom `timesteps` plus `strength`, it runs the same tail, and is compared so.
- The full VAE (`taesd=False`): diffusers' img2img samples the VAE's latent distribution with the
  generator (which then also shifts the noise drawn from it); the project takes its mode. TAESD (the
  default, used here) has no distribution, so the two agree.
- Frames of another size than requested: the project crops to fill, diffusers resizes (stretches), so
  frames are given here at the requested size. Prompts longer than 77 tokens (compel chunks) are not
  compared either: the embeddings are passed in, so text encoding is out of scope.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from diffusers import (
    LatentConsistencyModelImg2ImgPipeline,
    LatentConsistencyModelPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

import pipelines
from pipelines._denoise import quiet_logger

TOLERANCE = 1  # on 0-255: the two pipelines round to uint8 with different float expressions
SIZE = {"width": 256, "height": 256}
SDXL_SIZE = {"width": 576, "height": 512}  # SDXL's smallest size here; not square, so (h, w) order shows
PROMPT = "a watercolour lighthouse at dusk"
NEGATIVE = "blurry, low quality"
LCM_4_STEPS = [999, 759, 499, 259]  # LCMScheduler.set_timesteps(4): the full schedule the tail is cut from


def load(name: str) -> Any:
    return pipelines.load(name, tiny=True, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def img2img():
    return load("img2img")


@pytest.fixture(scope="module")
def sd_turbo():
    return load("img2img_sd_turbo")


@pytest.fixture(scope="module")
def txt2img():
    return load("txt2img")


@pytest.fixture(scope="module")
def sdxl():
    return load("img2img_sdxl_lcm_lora")


@pytest.fixture(scope="module")
def controlnet():
    return load("controlnet_canny")


def camera(seed: int = 0, width: int = 256, height: int = 256) -> Image.Image:
    """A frame with shapes (so Canny finds edges), a gradient and some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 200 / width + 30, y * 200 / height + 30, np.full_like(x, 110.0)], axis=-1)
    for _ in range(4):
        x0, y0 = rng.integers(0, width * 3 // 4), rng.integers(0, height * 3 // 4)
        w, h = rng.integers(width // 8, width // 3), rng.integers(height // 8, height // 3)
        image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    cx, cy, r = width * 0.6, height * 0.4, min(width, height) * 0.2
    image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    image = image + rng.normal(0, 6, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


# --- recording the UNet calls ---------------------------------------------------------------------

def _flat(value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return torch.cat([v.detach().float().flatten() for v in value])
    return torch.as_tensor(value).detach().float().clone()


@contextmanager
def unet_calls(unet: Any) -> Iterator[list[dict[str, torch.Tensor | None]]]:
    """Every call of `unet` while the block runs: its inputs by name, whatever way they were passed."""
    signature = inspect.signature(unet.forward)
    calls: list[dict[str, torch.Tensor | None]] = []

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(*args, **kwargs).arguments
        added = bound.get("added_cond_kwargs") or {}
        calls.append({
            "timestep": _flat(bound.get("timestep")),
            "sample": _flat(bound.get("sample")),
            "encoder_hidden_states": _flat(bound.get("encoder_hidden_states")),
            "timestep_cond": _flat(bound.get("timestep_cond")),
            "text_embeds": _flat(added.get("text_embeds")),
            "time_ids": _flat(added.get("time_ids")),
            "down_residuals": _flat(bound.get("down_block_additional_residuals")),
            "mid_residual": _flat(bound.get("mid_block_additional_residual")),
        })

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _input_difference(a: torch.Tensor | None, b: torch.Tensor | None) -> float | str | None:
    """Max abs difference of one input in two calls (0.0: equal; None: given in neither); a string when
    they cannot be compared."""
    if a is None and b is None:
        return None
    if a is None or b is None:  # no residuals against all-zero residuals (a ControlNet step switched off) is equal
        present = a if b is None else b
        return 0.0 if not present.any() else f"given in {'stock' if a is None else 'ours'} only"
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} (ours) != {tuple(b.shape)} (stock)"
    return (a - b).abs().max().item() if a.numel() else 0.0


def diagnose(ours: list[dict], stock: list[dict]) -> str:
    """Where two runs' UNet calls part: the first differing call and each input's max abs difference."""
    def timesteps(calls: list[dict]) -> list[float]:
        return [round(c["timestep"].item(), 3) for c in calls]

    lines = [f"UNet calls: ours {len(ours)}, stock {len(stock)}; timesteps ours {timesteps(ours)}, "
             + f"stock {timesteps(stock)}"]
    for i, (a, b) in enumerate(zip(ours, stock)):
        differences = {name: _input_difference(a[name], b[name]) for name in a}
        if any(d not in (0.0, None) for d in differences.values()):
            lines.append(f"first differing call: #{i}")
            for name, d in differences.items():
                shown = "not given" if d is None else d if isinstance(d, str) else f"max abs difference {d:.3g}"
                lines.append(f"  {name}: {shown}")
            return "\n".join(lines)
    common = min(len(ours), len(stock))
    if len(ours) == len(stock):
        lines.append(f"the first {common} calls are equal in every input: the runs part after the UNet "
                     "(scheduler step, decode or image conversion)")
    else:
        lines.append(f"the first {common} calls are equal in every input: one run makes more UNet calls")
    return "\n".join(lines)


# --- running both ---------------------------------------------------------------------------------

def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def run_ours(ours: Any, batch: list[Any], frames: list[Image.Image | None]) -> tuple[list[np.ndarray], list[dict]]:
    with unet_calls(ours.pipe.unet) as calls:
        images = ours.predict(batch[0], frames[0]) if len(batch) == 1 else ours.predict_batch(batch, frames)
    images = [images] if len(batch) == 1 else images
    return [as_array(image) for image in images], calls


def embeddings(ours: Any, batch: list[Any], sdxl: bool = False) -> dict[str, torch.Tensor]:
    """The project's own prompt embeddings, batched as the stock pipelines take them."""
    embeds = [ours.prompts(params.prompt, params.negative_prompt) for params in batch]
    kwargs = {
        "prompt_embeds": torch.cat([e.embeds for e in embeds]).clone(),
        "negative_prompt_embeds": torch.cat([e.negative_embeds for e in embeds]).clone(),
    }
    if sdxl:
        kwargs["pooled_prompt_embeds"] = torch.cat([e.pooled for e in embeds]).clone()
        kwargs["negative_pooled_prompt_embeds"] = torch.cat([e.negative_pooled for e in embeds]).clone()
    return kwargs


def generators(batch: list[Any]) -> torch.Generator | list[torch.Generator]:
    """One generator (a single frame, diffusers' plain path) or a list of them (a batch)."""
    made = [torch.Generator("cpu").manual_seed(params.seed) for params in batch]
    return made[0] if len(made) == 1 else made


def run_stock(stock: Any, **kwargs: Any) -> tuple[list[np.ndarray], list[dict]]:
    # LCM warns about custom timesteps, which are the point here.
    with unet_calls(stock.unet) as calls, quiet_logger("diffusers.schedulers.scheduling_lcm"):
        images = stock(output_type="pil", **kwargs).images
    return [as_array(image) for image in images], calls


def assert_equivalent(
    ours: tuple[list[np.ndarray], list[dict]], stock: tuple[list[np.ndarray], list[dict]]
) -> int:
    """Same number of images, each within TOLERANCE, and the same UNet timesteps; returns the max difference."""
    (ours_images, ours_calls), (stock_images, stock_calls) = ours, stock
    assert len(ours_images) == len(stock_images)
    difference = max(int(np.abs(a - b).max()) for a, b in zip(ours_images, stock_images))
    why = diagnose(ours_calls, stock_calls)
    assert difference <= TOLERANCE, f"images differ by up to {difference}/255\n{why}"
    assert [c["timestep"].item() for c in ours_calls] == [c["timestep"].item() for c in stock_calls], why
    print(f"max difference {difference}/255 over {len(ours_calls)} UNet calls")
    return difference


def own_pipe(ours: Any, cls: Any) -> Any:
    """The stock diffusers pipeline object the project's module built (and holds its components)."""
    assert type(ours.pipe) is cls
    return ours.pipe


def stock_pipeline(cls: Any, ours: Any) -> Any:
    """A stock diffusers pipeline class on the project's components (shared, not copied)."""
    accepted = inspect.signature(cls.__init__).parameters
    components = {name: value for name, value in ours.pipe.components.items() if name in accepted}
    extra = {"requires_safety_checker": False} if "requires_safety_checker" in accepted else {}
    pipe = cls(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- img2img (LCM) --------------------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [0.2, 1.5])
@pytest.mark.parametrize("strength", [0.25, 0.5, 0.75, 1.0])
def test_img2img_equals_stable_diffusion_img2img(img2img, strength, guidance):
    stock = own_pipe(img2img, StableDiffusionImg2ImgPipeline)
    params = img2img.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=11, steps=4,
                                 guidance_scale=guidance, strength=strength, **SIZE)
    frame = camera(1)
    ours = run_ours(img2img, [params], [frame])
    theirs = run_stock(stock, image=frame, strength=strength, num_inference_steps=4, guidance_scale=guidance,
                       generator=generators([params]), **embeddings(img2img, [params]))
    assert_equivalent(ours, theirs)
    assert len(ours[1]) == int(4 * strength)  # one UNet pass a step: no CFG on an LCM UNet


def test_img2img_negative_prompt_has_no_effect_on_an_lcm_unet(img2img):
    frame = camera(1)
    results = [
        run_ours(img2img, [img2img.InputParams(prompt=PROMPT, negative_prompt=negative, seed=11, steps=4,
                                               guidance_scale=1.5, strength=0.5, **SIZE)], [frame])[0][0]
        for negative in ("", NEGATIVE, "a completely different negative prompt")
    ]
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_img2img_batch_equals_stable_diffusion_img2img(img2img):
    stock = own_pipe(img2img, StableDiffusionImg2ImgPipeline)
    batch = [
        img2img.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=5, steps=4, guidance_scale=0.8,
                            strength=0.75, **SIZE),
        img2img.InputParams(prompt="a red cat on a sofa", negative_prompt=NEGATIVE, seed=99, steps=4,
                            guidance_scale=0.8, strength=0.75, **SIZE),
    ]
    frames = [camera(2), camera(3)]
    ours = run_ours(img2img, batch, frames)
    assert not np.array_equal(*ours[0])  # two different frames, prompts and seeds
    theirs = run_stock(stock, image=frames, strength=0.75, num_inference_steps=4, guidance_scale=0.8,
                       generator=generators(batch), **embeddings(img2img, batch))
    assert_equivalent(ours, theirs)


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.75, 1.0])
def test_img2img_equals_latent_consistency_img2img(img2img, strength):
    stock = stock_pipeline(LatentConsistencyModelImg2ImgPipeline, img2img)
    params = img2img.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=23, steps=4,
                                 guidance_scale=0.2, strength=strength, **SIZE)
    frame = camera(4)
    ours = run_ours(img2img, [params], [frame])
    # Below strength 1 its own schedule is another one (see above): give it the full 4-step schedule,
    # from which it cuts the same tail as the project.
    schedule = {"num_inference_steps": 4} if strength == 1.0 else {"timesteps": LCM_4_STEPS}
    prompt_embeds = embeddings(img2img, [params])["prompt_embeds"]  # LCM pipelines take no negative prompt
    theirs = run_stock(stock, image=frame, strength=strength, guidance_scale=0.2, generator=generators([params]),
                       prompt_embeds=prompt_embeds, **schedule)
    assert_equivalent(ours, theirs)


# --- img2img_sd_turbo (Euler, trailing spacing) ---------------------------------------------------

@pytest.mark.parametrize(
    ("steps", "strength", "guidance", "stock_steps"),
    [
        (1, 1.0, 0.0, 1),
        (2, 0.5, 0.0, 2),
        (2, 1.0, 0.0, 2),
        (1, 0.5, 0.0, 2),  # diffusers runs no step (and fails) at 1 step, strength 0.5: ceil(1 / 0.5) = 2 steps
        (1, 1.0, 1.5, 1),  # CFG against the negative prompt
        (2, 0.5, 1.8, 2),
    ],
)
def test_sd_turbo_equals_stable_diffusion_img2img(sd_turbo, steps, strength, guidance, stock_steps):
    stock = own_pipe(sd_turbo, StableDiffusionImg2ImgPipeline)
    params = sd_turbo.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=31, steps=steps,
                                  guidance_scale=guidance, strength=strength, **SIZE)
    frame = camera(5)
    ours = run_ours(sd_turbo, [params], [frame])
    theirs = run_stock(stock, image=frame, strength=strength, num_inference_steps=stock_steps,
                       guidance_scale=guidance, generator=generators([params]), **embeddings(sd_turbo, [params]))
    assert_equivalent(ours, theirs)
    rows = 2 if guidance > 1 else 1  # CFG: negative and positive rows in one UNet call
    assert all(call["sample"].shape[0] == rows for call in ours[1])


def test_sd_turbo_batch_with_cfg_equals_stable_diffusion_img2img(sd_turbo):
    # CFG on a batch: diffusers stacks all the negative rows, then all the positive ones.
    stock = own_pipe(sd_turbo, StableDiffusionImg2ImgPipeline)
    batch = [
        sd_turbo.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=3, steps=2, guidance_scale=1.5,
                             strength=1.0, **SIZE),
        sd_turbo.InputParams(prompt="a red cat on a sofa", negative_prompt="dark", seed=4, steps=2,
                             guidance_scale=1.5, strength=1.0, **SIZE),
    ]
    frames = [camera(8), camera(9)]
    ours = run_ours(sd_turbo, batch, frames)
    theirs = run_stock(stock, image=frames, strength=1.0, num_inference_steps=2, guidance_scale=1.5,
                       generator=generators(batch), **embeddings(sd_turbo, batch))
    assert_equivalent(ours, theirs)


def test_sd_turbo_negative_prompt_steers_cfg(sd_turbo):
    frame = camera(5)
    results = [
        run_ours(sd_turbo, [sd_turbo.InputParams(prompt=PROMPT, negative_prompt=negative, seed=31, steps=1,
                                                 guidance_scale=1.5, strength=1.0, **SIZE)], [frame])[0][0]
        for negative in ("", NEGATIVE)
    ]
    assert not np.array_equal(*results)


# --- txt2img (LCM) --------------------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [0.2, 1.5])
def test_txt2img_equals_stable_diffusion(txt2img, guidance):
    stock = own_pipe(txt2img, StableDiffusionPipeline)
    params = txt2img.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=41, steps=4,
                                 guidance_scale=guidance, **SIZE)
    ours = run_ours(txt2img, [params], [None])
    theirs = run_stock(stock, num_inference_steps=4, guidance_scale=guidance, generator=generators([params]),
                       **SIZE, **embeddings(txt2img, [params]))
    assert_equivalent(ours, theirs)


@pytest.mark.parametrize("steps", [2, 4])
def test_txt2img_equals_latent_consistency(txt2img, steps):
    stock = stock_pipeline(LatentConsistencyModelPipeline, txt2img)
    params = txt2img.InputParams(prompt=PROMPT, seed=43, steps=steps, guidance_scale=0.2, **SIZE)
    ours = run_ours(txt2img, [params], [None])
    theirs = run_stock(stock, num_inference_steps=steps, guidance_scale=0.2, generator=generators([params]),
                       prompt_embeds=embeddings(txt2img, [params])["prompt_embeds"], **SIZE)
    assert_equivalent(ours, theirs)


def test_txt2img_batch_equals_stable_diffusion(txt2img):
    stock = own_pipe(txt2img, StableDiffusionPipeline)
    batch = [txt2img.InputParams(prompt=PROMPT, seed=1, steps=4, guidance_scale=0.2, **SIZE),
             txt2img.InputParams(prompt="a red cat on a sofa", seed=2, steps=4, guidance_scale=0.2, **SIZE)]
    ours = run_ours(txt2img, batch, [None, None])
    theirs = run_stock(stock, num_inference_steps=4, guidance_scale=0.2, generator=generators(batch),
                       **SIZE, **embeddings(txt2img, batch))
    assert_equivalent(ours, theirs)


# --- img2img_sdxl_lcm_lora ------------------------------------------------------------------------

def sdxl_size_conditioning() -> dict[str, Any]:
    """diffusers' SDXL size arguments, spelled out: original and target size (h, w), crop (0, 0).

    Without an aesthetic score (`requires_aesthetics_score` False, as the UNet's added-embedding width
    of 6 time ids asks) the time ids are original size + crop + target size, for the negative rows
    too: (h, w, 0, 0, h, w), what the project passes. (With it they would be 5 numbers including
    `aesthetic_score` / `negative_aesthetic_score`, and the negative rows would differ.)
    """
    height, width = SDXL_SIZE["height"], SDXL_SIZE["width"]
    return {"original_size": (height, width), "target_size": (height, width), "crops_coords_top_left": (0, 0)}


@pytest.mark.parametrize(("strength", "guidance"), [(0.5, 1.0), (1.0, 1.0), (0.5, 1.5)])
def test_sdxl_equals_stable_diffusion_xl_img2img(sdxl, strength, guidance):
    stock = own_pipe(sdxl, StableDiffusionXLImg2ImgPipeline)
    assert not stock.config.requires_aesthetics_score
    height, width = SDXL_SIZE["height"], SDXL_SIZE["width"]
    params = sdxl.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=51, steps=4,
                              guidance_scale=guidance, strength=strength, **SDXL_SIZE)
    frame = camera(6, width, height)
    ours = run_ours(sdxl, [params], [frame])
    theirs = run_stock(stock, image=frame, strength=strength, num_inference_steps=4, guidance_scale=guidance,
                       generator=generators([params]), **sdxl_size_conditioning(),
                       **embeddings(sdxl, [params], sdxl=True))
    assert_equivalent(ours, theirs)
    rows = 2 if guidance > 1 else 1  # a row per CFG half
    assert ours[1][0]["time_ids"].tolist() == [[height, width, 0, 0, height, width]] * rows


def test_sdxl_batch_with_cfg_equals_stable_diffusion_xl_img2img(sdxl):
    stock = own_pipe(sdxl, StableDiffusionXLImg2ImgPipeline)
    height, width = SDXL_SIZE["height"], SDXL_SIZE["width"]
    batch = [
        sdxl.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=7, steps=4, guidance_scale=1.5,
                         strength=0.5, **SDXL_SIZE),
        sdxl.InputParams(prompt="a red cat on a sofa", negative_prompt="dark", seed=8, steps=4, guidance_scale=1.5,
                         strength=0.5, **SDXL_SIZE),
    ]
    frames = [camera(10, width, height), camera(11, width, height)]
    ours = run_ours(sdxl, batch, frames)
    theirs = run_stock(stock, image=frames, strength=0.5, num_inference_steps=4, guidance_scale=1.5,
                       generator=generators(batch), **sdxl_size_conditioning(), **embeddings(sdxl, batch, sdxl=True))
    assert_equivalent(ours, theirs)


# --- controlnet_canny -----------------------------------------------------------------------------

@contextmanager
def lcm_guidance_embedding(unet: Any, guidance_scale: float) -> Iterator[None]:
    """Give the UNet the LCM guidance embedding the stock ControlNet img2img pipeline leaves out,
    computed as diffusers' LCM pipelines do (get_guidance_scale_embedding of w - 1)."""

    def add(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("timestep_cond") is None:
            batch = (args[0] if args else kwargs["sample"]).shape[0]
            w = torch.tensor(guidance_scale - 1).repeat(batch)
            kwargs["timestep_cond"] = StableDiffusionImg2ImgPipeline.get_guidance_scale_embedding(
                None, w, embedding_dim=unet.config.time_cond_proj_dim
            ).to(device=unet.device, dtype=unet.dtype)
        return args, kwargs

    handle = unet.register_forward_pre_hook(add, with_kwargs=True)  # before the recorder's: it sees the result
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("strength", "scale", "start", "end", "low", "high"),
    [(0.5, 0.8, 0.0, 1.0, 100, 200), (1.0, 1.3, 0.25, 0.75, 50, 150), (0.75, 0.5, 0.0, 0.5, 100, 200)],
)
def test_controlnet_canny_equals_stable_diffusion_controlnet_img2img(
    controlnet, strength, scale, start, end, low, high
):
    stock = own_pipe(controlnet, StableDiffusionControlNetImg2ImgPipeline)
    guidance = 0.2  # <= 1: the stock ControlNet pipeline would run CFG above 1 even on an LCM UNet
    params = controlnet.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=61, steps=4,
                                    guidance_scale=guidance, strength=strength, controlnet_scale=scale,
                                    control_start=start, control_end=end, canny_low=low, canny_high=high, **SIZE)
    frame = camera(7)
    # The conditioning image the project makes: OpenCV's Canny edges of the (already sized) frame, 3 channels.
    edges = cv2.Canny(np.asarray(frame), low, high)
    assert 0.01 < (edges > 0).mean() < 0.5  # a real edge map
    control_image = Image.fromarray(edges).convert("RGB")
    ours = run_ours(controlnet, [params], [frame])
    with lcm_guidance_embedding(stock.unet, guidance):
        theirs = run_stock(
            stock, image=frame, control_image=control_image, strength=strength, num_inference_steps=4,
            guidance_scale=guidance, controlnet_conditioning_scale=scale, control_guidance_start=start,
            control_guidance_end=end, generator=generators([params]), **embeddings(controlnet, [params]),
        )
    assert_equivalent(ours, theirs)
    on = [call["down_residuals"] is not None for call in ours[1]]
    steps = len(on)
    assert on == [start <= i / steps and (i + 1) / steps <= end for i in range(steps)]


def test_controlnet_canny_control_image_reaches_the_unet(controlnet):
    """The comparison above can tell control images apart: other Canny thresholds, another output."""
    frame = camera(7)
    results = [
        run_ours(controlnet, [controlnet.InputParams(prompt=PROMPT, seed=61, steps=4, strength=0.5, canny_low=low,
                                                     canny_high=high, **SIZE)], [frame])[0][0]
        for low, high in ((100, 200), (20, 60))
    ]
    assert int(np.abs(results[0] - results[1]).max()) > TOLERANCE


# --- the diagnosis itself -------------------------------------------------------------------------

def test_diagnosis_names_the_first_differing_call_and_input():
    def call(t: float, sample: float) -> dict:
        return {"timestep": torch.tensor(t), "sample": torch.full((2,), sample),
                "encoder_hidden_states": torch.zeros(3), "timestep_cond": None, "text_embeds": None,
                "time_ids": None, "down_residuals": torch.zeros(4), "mid_residual": None}

    ours = [call(999, 0.0), call(499, 1.0)]
    stock = [call(999, 0.0), call(499, 1.25)]
    stock[1]["down_residuals"] = None  # all-zero residuals against none: the same
    message = diagnose(ours, stock)
    assert "first differing call: #1" in message and "sample: max abs difference 0.25" in message
    assert "timestep: max abs difference 0" in message and "down_residuals: max abs difference 0" in message
    assert "timestep_cond: not given" in message
    assert "the first 2 calls are equal" in diagnose(ours, ours)
    assert "one run makes more UNet calls" in diagnose(ours, ours[:1])
    assert math.isclose(_input_difference(torch.ones(2), torch.ones(2)), 0.0)
