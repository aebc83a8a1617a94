"""The denoising loop every pipeline runs: image to image (or text to image), a batch of frames with
one prompt and seed each, classifier-free guidance, SDXL conditioning and ControlNet. Its images
equal the stock diffusers pipelines' wherever the two mean the same thing (tests/test_equivalence.py).
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_img2img import (
    LatentConsistencyModelImg2ImgPipeline,
)
from PIL import Image

from pipelines._prompts import PromptEmbeds
from pipelines._temporal import FeatureBank, StreamMemory, blend_previous_output


def images_to_tensor(images: Sequence[Image.Image], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """PIL RGB images of one size -> Nx3xHxW in [-1, 1], channels_last."""
    array = np.stack([np.asarray(image.convert("RGB")) for image in images])  # a new, writable array
    tensor = torch.from_numpy(array).to(device).permute(0, 3, 1, 2)
    tensor = tensor.to(dtype=dtype).div_(127.5).sub_(1.0)
    return tensor.contiguous(memory_format=torch.channels_last)


def tensor_to_images(tensor: torch.Tensor) -> list[Image.Image]:
    """Nx3xHxW in [-1, 1] -> PIL RGB images."""
    array = tensor.float().add(1.0).mul(127.5).clamp(0, 255).round().to(torch.uint8)
    return [Image.fromarray(frame) for frame in array.permute(0, 2, 3, 1).cpu().numpy()]


def encode_latents(vae: Any, image: torch.Tensor) -> torch.Tensor:
    encoded = vae.encode(image)
    if hasattr(encoded, "latents"):  # AutoencoderTiny (TAESD)
        latents = encoded.latents
    else:  # AutoencoderKL: the mean is enough, img2img adds its own noise
        latents = encoded.latent_dist.mode()
    return latents * vae.config.scaling_factor


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]


def img2img_steps(steps: int, strength: float) -> int:
    """Schedule length so that int(n * strength) >= 1: at least one denoising step always runs."""
    n = steps
    while int(n * strength) < 1:
        n += 1
    return n


def img2img_step_count(steps: int, strength: float) -> int:
    """How many denoising steps an image-to-image frame runs (the UNet calls, without guidance)."""
    return int(img2img_steps(steps, strength) * strength)


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Mute a logger's warnings for the block."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def img2img_timesteps(scheduler: Any, steps: int, strength: float) -> list[int]:
    """The timesteps an image-to-image frame runs: int(n * strength) steps (at least one) of the
    n-step schedule, as diffusers does, but starting from the noise level `strength` asks for, so
    strength stays a continuous knob even at one or two steps."""
    n = img2img_steps(steps, strength)
    scheduler.set_timesteps(n)
    tail = [int(t) for t in scheduler.timesteps[n - img2img_step_count(steps, strength) :]]
    train_steps = scheduler.config.num_train_timesteps
    first = round(strength * train_steps) - 1
    original_steps = getattr(scheduler.config, "original_inference_steps", None)
    if original_steps:  # LCM: stay on the timesteps it was distilled on
        stride = train_steps // original_steps
        first = max(1, round((first + 1) / stride)) * stride - 1
    return [max(first, tail[0]), *tail[1:]]


def set_img2img_timesteps(scheduler: Any, steps: int, strength: float, device: torch.device) -> torch.Tensor:
    """Set the scheduler up for an image-to-image frame; returns the timesteps to run. Schedulers that
    take a custom schedule (LCM, TCD, Euler) get `img2img_timesteps`; the others (Euler ancestral,
    DDIM) run the tail of the n-step schedule, as diffusers does, so their strength moves in steps of 1/n."""
    if "timesteps" in inspect.signature(scheduler.set_timesteps).parameters:
        with quiet_logger(type(scheduler).__module__):  # LCM warns that a schedule not starting at 999 is unusual: here it is the point
            scheduler.set_timesteps(timesteps=img2img_timesteps(scheduler, steps, strength), device=device)
        return scheduler.timesteps
    n = img2img_steps(steps, strength)
    scheduler.set_timesteps(n, device=device)
    start = (n - img2img_step_count(steps, strength)) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def placement(model: Any) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a model's weights, from its first parameter. diffusers' `model.device`
    and `model.dtype` walk every submodule for offloading hooks first: 9 ms for the pair on SD 1.5's
    UNet here, 24 on SDXL's, several times a frame."""
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def guidance_embedding(unet: Any, guidance_scale: float, batch: int) -> torch.Tensor | None:
    """LCM-distilled UNets take the guidance scale as an embedding: diffusers' own
    (`get_guidance_scale_embedding` of w - 1, as its LCM pipelines compute it)."""
    dim = unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.tensor(guidance_scale - 1).repeat(batch)
    # A method that does not use its pipeline: called on the class, as diffusers' own code has it.
    embedding = LatentConsistencyModelImg2ImgPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    device, dtype = placement(unet)
    return embedding.to(device=device, dtype=dtype)


def uses_cfg(unet: Any, guidance_scale: float) -> bool:
    """Classifier-free guidance (two UNet rows a frame): above 1, for a UNet without a guidance embedding."""
    return guidance_scale > 1.0 and unet.config.time_cond_proj_dim is None


@dataclass(frozen=True)
class Control:
    """A ControlNet and its conditioning image for one frame (diffusers' semantics for start and end)."""

    controlnet: Any
    image: torch.Tensor  # 1x3xHxW in [0, 1]
    scale: float
    start: float = 0.0  # fraction of the denoising steps where the control starts to apply
    end: float = 1.0  # ... and where it stops


def denoise(
    pipe: Any,
    images: torch.Tensor | None,
    prompts: Sequence[PromptEmbeds],
    *,
    seeds: Sequence[int],
    steps: int,
    strength: float,
    guidance_scale: float,
    width: int | None = None,
    height: int | None = None,
    controls: Sequence[Control] = (),
    eta: float | None = None,
    guidance_mode: str = "full",
    residual_delta: float = 1.0,
    image_embeds: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    memories: Sequence[StreamMemory | None] | None = None,
    temporal: float = 0.0,
    bank: FeatureBank | None = None,
) -> torch.Tensor:
    """Denoise a batch of frames (one prompt and seed each, everything else shared) with the pipe's
    unet, vae and scheduler; returns Nx3xHxW in [-1, 1].

    With images: encode them, noise them to `strength`, run int(n * strength) steps of an n-step
    schedule (at least one), decode. With `images=None` (text to image): start from pure noise of
    width x height and run all `steps`. SDXL's pooled embeddings and size conditioning, and
    ControlNets (their residuals summed, as diffusers' MultiControlNetModel does), are used when given;
    `eta` goes to schedulers that take it (TCD's gamma). Each frame's output depends only on its own
    inputs and seed.

    Guidance, as in diffusers: an LCM-distilled UNet (one with a guidance embedding) takes the scale
    as that embedding and nothing else, so its negative prompt has no effect; any other UNet runs
    classifier-free guidance against the negative prompts (a second UNet pass) when the scale is
    above 1.

    `image_embeds` (an IP-Adapter's, one (positive, negative) pair a frame) go to the UNet beside the
    prompt, as diffusers passes them.

    `guidance_mode` "self" or "initialize" replaces the negative prompt's UNet pass of image to image
    by StreamDiffusion's residual guidance (`_steps`, `_one_time_negative`): half the UNet evaluations
    of "full" CFG (initialize: one more, on the first step).

    Temporal consistency (pipelines/_temporal.py): with `memories` (one per frame, its stream's, or
    None) and `temporal` above 0, each frame starts from its encoding blended with its stream's
    previous output, and the UNet's self-attention in `bank` also attends to the stream's previous
    frame, both less where the picture moved (a motion map of the encoded inputs); a stream whose
    picture changed as a whole starts afresh. The memories then hold this frame. At 0, the frames are
    independent.
    """
    lengths = [prompt.embeds.shape[1] for prompt in prompts]
    if len(set(lengths)) > 1:  # compel encodes long prompts in more 77-token chunks: a batch per length
        return _denoise_by_length(pipe, images, prompts, lengths, seeds=seeds, steps=steps, strength=strength,
                                  guidance_scale=guidance_scale, width=width, height=height, controls=controls, eta=eta,
                                  guidance_mode=guidance_mode, residual_delta=residual_delta, image_embeds=image_embeds,
                                  memories=memories, temporal=temporal, bank=bank)
    remember = memories is not None and temporal > 0 and images is not None
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    device, dtype = placement(unet)
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    residual = guidance_mode in ("self", "initialize") and uses_residual_guidance(unet, scheduler, guidance_scale, images)
    cfg = uses_cfg(unet, guidance_scale) and not residual

    if images is None:
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
    else:
        timesteps = set_img2img_timesteps(scheduler, steps, strength, device)

    def noise(shape: tuple[int, ...]) -> torch.Tensor:  # each frame's noise from its own seed
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generators])

    if images is None:
        factor = pipe.vae_scale_factor
        latents = noise((len(seeds), unet.config.in_channels, height // factor, width // factor))
        latents = latents * scheduler.init_noise_sigma
    else:
        latents = encode_latents(vae, images)
        motions: list[Any] = []
        if remember:
            latents, motions = blend_previous_output(latents, list(memories), temporal)  # type: ignore[arg-type]
        clean = latents
        latents = scheduler.add_noise(latents, noise(latents.shape), timesteps[:1])
    out_height, out_width = latents.shape[-2] * pipe.vae_scale_factor, latents.shape[-1] * pipe.vae_scale_factor

    def guided(positive: list[torch.Tensor], negative: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([*negative, *positive]) if cfg else torch.cat(positive)  # uncond first, as chunk(2) reads

    embeds = guided([p.embeds for p in prompts], [p.negative_embeds for p in prompts])
    batch = embeds.shape[0]
    timestep_cond = guidance_embedding(unet, guidance_scale, batch)
    added_cond = None
    if prompts[0].pooled is not None:  # SDXL: pooled text embedding and size micro-conditioning
        pooled = guided([p.pooled for p in prompts], [p.negative_pooled for p in prompts])
        time_ids = torch.tensor([[out_height, out_width, 0, 0, out_height, out_width]], device=device, dtype=dtype)
        added_cond = {"text_embeds": pooled, "time_ids": time_ids.repeat(batch, 1)}
    if image_embeds is not None:
        ip = guided([p for p, _ in image_embeds], [n for _, n in image_embeds]).to(device=device, dtype=dtype)
        added_cond = (added_cond or {}) | {"image_embeds": [ip]}
    rows = batch // len(seeds)  # the control images of a frame's rows (2 with CFG) are its own
    controls = [replace(c, image=torch.cat([c.image.to(device=device, dtype=dtype)] * rows)) for c in controls]
    step_options = {} if eta is None else {"eta": eta}
    reference = None
    if residual:
        reference = clean
        if guidance_mode == "initialize":  # the negative prompt's own estimate, from one UNet pass at the first step
            negative = torch.cat([p.negative_embeds for p in prompts])
            negative_cond: dict[str, Any] | None = None
            if prompts[0].pooled is not None:
                negative_cond = {"text_embeds": torch.cat([p.negative_pooled for p in prompts]), "time_ids": added_cond["time_ids"]}
            if image_embeds is not None:
                negatives = torch.cat([n for _, n in image_embeds]).to(device=device, dtype=dtype)
                negative_cond = (negative_cond or {}) | {"image_embeds": [negatives]}
            reference = _one_time_negative(unet, scheduler, latents, timesteps, negative, negative_cond, controls)

    if bank is not None and remember:
        bank.start(list(memories), rows_per_frame=2 if cfg else 1, strength=temporal,  # type: ignore[arg-type]
                   motions=motions, latent_size=(latents.shape[-2], latents.shape[-1]))
    try:
        result = _steps(unet, scheduler, latents, timesteps, embeds, timestep_cond, added_cond, cfg, guidance_scale,
                        generators, controls, step_options, bank, reference, residual_delta)
    finally:
        if bank is not None:
            bank.stop()
    if remember:
        for row, memory in enumerate(memories):  # type: ignore[arg-type]
            if memory is not None:
                memory.output_latent = result[row : row + 1].detach()
    return decode_latents(vae, result)


def _steps(unet: Any, scheduler: Any, latents: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor,
           timestep_cond: torch.Tensor | None, added_cond: dict[str, torch.Tensor] | None, cfg: bool,
           guidance_scale: float, generators: list[torch.Generator], controls: Sequence[Control],
           step_options: dict[str, Any], bank: FeatureBank | None, reference: torch.Tensor | None = None,
           residual_delta: float = 1.0) -> torch.Tensor:
    """The denoising steps: the final latents (LCM: its last denoised estimate). With `reference`,
    residual guidance: the unconditional prediction is the noise that takes `reference` to the
    current latents, times `residual_delta`, instead of a UNet pass."""
    result = latents
    for i, t in enumerate(timesteps):
        if bank is not None:
            bank.step = i
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]) if cfg else latents, t)
        residuals = _control_residuals(controls, i / len(timesteps), (i + 1) / len(timesteps), model_input, t, embeds,
                                       added_cond)
        noise_pred = unet(
            model_input, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
            added_cond_kwargs=added_cond, return_dict=False, **residuals,
        )[0]
        if cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        elif reference is not None:
            signal, spread = noise_scales(scheduler, t)
            uncond = residual_delta * (latents - signal * reference) / spread
            noise_pred = uncond + guidance_scale * (noise_pred - uncond)
        out = scheduler.step(noise_pred, t, latents, generator=generators, return_dict=True, **step_options)
        latents = out.prev_sample
        # LCM's output is its denoised estimate; other schedulers end on prev_sample.
        result = getattr(out, "denoised", None)
        if result is None:
            result = latents
    return result


def uses_residual_guidance(unet: Any, scheduler: Any, guidance_scale: float, images: Any) -> bool:
    """Whether residual guidance can stand in for CFG here: image to image (the input is the
    reference), a UNet that would run CFG, and an epsilon-predicting model."""
    return images is not None and uses_cfg(unet, guidance_scale) and scheduler.config.prediction_type == "epsilon"


def noise_scales(scheduler: Any, t: Any) -> tuple[float, float]:
    """(signal, noise) such that a latent at timestep t is signal * clean + noise * epsilon: the
    variance-preserving form (LCM, TCD, DDIM), or sigma's for Euler's schedulers (1, sigma)."""
    alpha = float(scheduler.alphas_cumprod[int(t)])
    if isinstance(scheduler, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)):
        return 1.0, ((1 - alpha) / alpha) ** 0.5
    return alpha**0.5, (1 - alpha) ** 0.5


def _one_time_negative(unet: Any, scheduler: Any, latents: torch.Tensor, timesteps: torch.Tensor, negative: torch.Tensor,
                       negative_cond: dict[str, torch.Tensor] | None, controls: Sequence[Control]) -> torch.Tensor:
    """StreamDiffusion's one-time negative: the clean latent the negative prompt predicts at the first
    step, from one UNet pass; residual guidance then measures every later step against it."""
    t = timesteps[0]
    model_input = scheduler.scale_model_input(latents, t)
    residuals = _control_residuals(controls, 0.0, 1 / len(timesteps), model_input, t, negative, negative_cond)
    uncond = unet(model_input, t, encoder_hidden_states=negative, added_cond_kwargs=negative_cond, return_dict=False,
                  **residuals)[0]
    signal, spread = noise_scales(scheduler, t)
    return (latents - spread * uncond) / signal


def _control_residuals(controls: Sequence[Control], start: float, end: float, model_input: torch.Tensor,
                       t: torch.Tensor, embeds: torch.Tensor, added_cond: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """The ControlNets' residuals for the UNet at a step spanning [start, end] of the schedule: the sum
    over those whose window holds the step (diffusers runs the others at scale 0, which adds nothing)."""
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    for control in controls:
        if not (control.start <= start and end <= control.end):
            continue
        control_down, control_mid = control.controlnet(
            model_input, t, encoder_hidden_states=embeds, controlnet_cond=control.image,
            conditioning_scale=control.scale, added_cond_kwargs=added_cond, return_dict=False,
        )
        if down is None:
            down, mid = list(control_down), control_mid
        else:
            down = [a + b for a, b in zip(down, control_down)]
            mid = mid + control_mid
    if down is None:
        return {}
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def _denoise_by_length(pipe: Any, images: torch.Tensor | None, prompts: Sequence[PromptEmbeds], lengths: list[int],
                       *, seeds: Sequence[int], controls: Sequence[Control],
                       image_embeds: Sequence[tuple[torch.Tensor, torch.Tensor]] | None,
                       memories: Sequence[StreamMemory | None] | None, **shared: Any) -> torch.Tensor:
    outputs: dict[int, torch.Tensor] = {}
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        part = denoise(
            pipe, None if images is None else images[rows], [prompts[i] for i in rows],
            seeds=[seeds[i] for i in rows], controls=[replace(c, image=c.image[rows]) for c in controls],
            image_embeds=None if image_embeds is None else [image_embeds[i] for i in rows],
            memories=None if memories is None else [memories[i] for i in rows], **shared,
        )
        outputs.update(zip(rows, part))
    return torch.stack([outputs[i] for i in range(len(lengths))])
