"""Mechanics shared by every pipeline, written once: device and dtype, model loading (hub id, local
folder, single-file checkpoint, miniature), TAESD, prompt embeddings (compel, cached), image <->
tensor, the img2img denoising loop, channels_last and torch.compile.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from pipelines.base import ModelOptions

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


# --- device and dtype -----------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks the first of cuda, mps, xpu that is present, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    return torch.device("cpu")


def cpu_supports_bfloat16() -> bool:
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_arm_sve_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: float16 on GPUs, bfloat16 on CPUs with native bf16 (about 1.8x faster), else float32."""
    if name != "auto":
        return getattr(torch, name)
    if device.type in ("cuda", "mps", "xpu"):
        return torch.float16
    return torch.bfloat16 if cpu_supports_bfloat16() else torch.float32


# --- loading --------------------------------------------------------------------------------------


class ModelUnavailable(RuntimeError):
    """A model that is neither on disk nor downloadable; the message says what to do."""


def _hub_unavailable(model_id: str, why: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"Model {model_id!r} is not in the local Hugging Face cache and cannot be downloaded ({why}). "
        "Connect to the Hugging Face hub, pass --model-id with a local diffusers folder or a "
        ".safetensors checkpoint, or run with --tiny for miniature random models."
    )


def ensure_hub_model(model_id: str) -> None:
    """Fail at once, with a clear message, when a hub model can be neither read from cache nor fetched."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snapshot_download(model_id, local_files_only=True, allow_patterns=["*.json"])
        return
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise _hub_unavailable(model_id, "HF_HUB_OFFLINE is set")
    try:
        HfApi().model_info(model_id, timeout=10)
    except RepositoryNotFoundError:
        raise ModelUnavailable(f"Model {model_id!r} does not exist on the Hugging Face hub (or needs a login).") from None
    except Exception as error:  # DNS, connection refused, timeout, proxy: all mean "no hub from here"
        raise _hub_unavailable(model_id, f"hub unreachable: {type(error).__name__}") from None


def load_pipeline(cls: Any, model_id: str, dtype: torch.dtype, config_id: str = "", **kwargs: Any) -> Any:
    """Load a diffusers pipeline from a hub id, a local diffusers folder or a single-file checkpoint
    (whose configs come from `config_id`, or from the hub repo diffusers guesses from its keys)."""
    path = Path(model_id).expanduser()
    if path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
        log.info("Loading single-file checkpoint %s", path)
        if config_id and not Path(config_id).expanduser().is_dir():
            ensure_hub_model(config_id)
        return cls.from_single_file(str(path), torch_dtype=dtype, config=config_id or None, **kwargs)
    if path.is_dir():
        log.info("Loading diffusers folder %s", path)
        return cls.from_pretrained(str(path), torch_dtype=dtype, **kwargs)
    if path.exists() or model_id.startswith((".", "/", "~")) or model_id.endswith(SINGLE_FILE_SUFFIXES):
        raise ModelUnavailable(
            f"--model-id {model_id!r}: expected a hub id, a diffusers folder or a "
            f"{'/'.join(SINGLE_FILE_SUFFIXES)} file, and found no such folder or file."
        )
    ensure_hub_model(model_id)
    log.info("Loading %s from the Hugging Face hub cache (downloading what is missing)", model_id)
    return cls.from_pretrained(model_id, torch_dtype=dtype, **kwargs)


def load_model(cls: Any, model_id: str, dtype: torch.dtype, **kwargs: Any) -> Any:
    """Load one model (an autoencoder, a ControlNet) from a hub id or a local folder."""
    if not Path(model_id).expanduser().is_dir():
        ensure_hub_model(model_id)
    return cls.from_pretrained(model_id, torch_dtype=dtype, **kwargs)


def swap_in_taesd(pipe: Any, options: ModelOptions, repo: str, build_tiny: Callable[[], Any]) -> None:
    """Replace the full VAE by TAESD: about 10x cheaper to encode and decode, near the same look."""
    if not options.taesd:
        return
    dtype = pipe.unet.dtype
    pipe.vae = _cast(build_tiny(), dtype) if options.tiny else load_model(_autoencoder_tiny(), repo, dtype)


def _cast(model: Any, dtype: torch.dtype) -> Any:
    # What from_pretrained(torch_dtype=...) does for loaded models; diffusers' own .to() warns about it.
    return torch.nn.Module.to(model, dtype=dtype)


def _autoencoder_tiny() -> Any:
    from diffusers import AutoencoderTiny

    return AutoencoderTiny


def optimize(pipe: Any, options: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
    """Move to the device in the run dtype, channels_last, and torch.compile when asked."""
    pipe.to(device=device)  # already in `dtype`: loaded or built in it
    pipe.set_progress_bar_config(disable=True)
    if device.type != "mps":  # channels_last is slower on MPS
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if options.torch_compile:
        log.info("torch.compile: the UNet and the VAE compile on the warm-up frame")
        pipe.unet = torch.compile(pipe.unet, fullgraph=False)
        pipe.vae.decoder = torch.compile(pipe.vae.decoder, fullgraph=False)


# --- prompts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEmbeds:
    embeds: torch.Tensor
    negative_embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None


class PromptCache:
    """Prompt embeddings keyed by (prompt, negative prompt): the text encoder runs only on a change.

    With compel, prompts take weights ("a (red)++ cat") and may exceed 77 tokens.
    """

    def __init__(self, pipe: Any, *, use_compel: bool, sdxl: bool = False, max_entries: int = 32) -> None:
        self._pipe = pipe
        self._sdxl = sdxl
        self._compel: Any = None
        if use_compel:
            from compel import CompelForSD, CompelForSDXL

            self._compel = CompelForSDXL(pipe) if sdxl else CompelForSD(pipe)
        self._entries: OrderedDict[tuple[str, str], PromptEmbeds] = OrderedDict()
        self._max_entries = max_entries
        self.misses = 0  # how many times the text encoder ran

    def __call__(self, prompt: str, negative_prompt: str = "") -> PromptEmbeds:
        key = (prompt, negative_prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        with torch.inference_mode():
            embeds = self._encode(prompt, negative_prompt)
        self._entries[key] = embeds
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return embeds

    def _encode(self, prompt: str, negative_prompt: str) -> PromptEmbeds:
        dtype = self._pipe.unet.dtype
        if self._compel is not None:
            c = self._compel(prompt, negative_prompt=negative_prompt)
            pooled = c.pooled_embeds.to(dtype) if c.pooled_embeds is not None else None
            negative_pooled = c.negative_pooled_embeds.to(dtype) if c.negative_pooled_embeds is not None else None
            return PromptEmbeds(c.embeds.to(dtype), c.negative_embeds.to(dtype), pooled, negative_pooled)
        device = self._pipe.unet.device
        if self._sdxl:
            embeds, negative, pooled, negative_pooled = self._pipe.encode_prompt(
                prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=negative_prompt, force_zeros_for_empty_prompt=False,
            )
            return PromptEmbeds(embeds, negative, pooled, negative_pooled)
        embeds, negative = self._pipe.encode_prompt(
            prompt, device, 1, do_classifier_free_guidance=True, negative_prompt=negative_prompt
        )
        return PromptEmbeds(embeds, negative)


# --- images ---------------------------------------------------------------------------------------


def crop_to_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers width x height, then crop the centre: no stretching, no bars."""
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(scaled, Image.Resampling.BILINEAR)
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def image_to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """PIL RGB -> 1x3xHxW in [-1, 1], channels_last."""
    array = np.array(image.convert("RGB"))  # a writable copy: torch refuses to wrap read-only memory
    tensor = torch.from_numpy(array).to(device).permute(2, 0, 1).unsqueeze(0)
    tensor = tensor.to(dtype=dtype).div_(127.5).sub_(1.0)
    return tensor.contiguous(memory_format=torch.channels_last)


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """1x3xHxW in [-1, 1] -> PIL RGB."""
    array = (tensor[0].float().add(1.0).mul(127.5)).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def encode_latents(vae: Any, image: torch.Tensor) -> torch.Tensor:
    encoded = vae.encode(image)
    if hasattr(encoded, "latents"):  # AutoencoderTiny (TAESD)
        latents = encoded.latents
    else:  # AutoencoderKL: the mean is enough, img2img adds its own noise
        latents = encoded.latent_dist.mode()
    return latents * vae.config.scaling_factor


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]


# --- denoising ------------------------------------------------------------------------------------


def img2img_steps(steps: int, strength: float) -> int:
    """Schedule length so that int(n * strength) >= 1: at least one denoising step always runs."""
    n = steps
    while int(n * strength) < 1:
        n += 1
    return n


def guidance_embedding(unet: Any, guidance_scale: float, batch: int) -> torch.Tensor | None:
    """LCM-distilled UNets take the guidance scale as an embedding (w - 1, as diffusers' LCM pipelines)."""
    dim = unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.full((batch,), (guidance_scale - 1.0) * 1000.0)
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(np.log(10000.0) / (half - 1)))
    angles = w[:, None] * freqs[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.to(device=unet.device, dtype=unet.dtype)


def img2img(
    pipe: Any,
    image: torch.Tensor,
    prompt: PromptEmbeds,
    *,
    steps: int,
    strength: float,
    guidance_scale: float,
    seed: int,
    unet_kwargs: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]] | None = None,
) -> torch.Tensor:
    """Image-to-image with the pipe's unet, vae and scheduler: encode, noise to `strength`, denoise
    int(n * strength) steps of an n-step schedule, decode. Returns 1x3xHxW in [-1, 1].

    Guidance above 1 runs classifier-free guidance against the negative prompt (a second UNet pass);
    `unet_kwargs(latent_batch, t)` adds pipeline-specific UNet inputs (SDXL time ids, ControlNet).
    Same inputs and seed give the same output.
    """
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    generator = torch.Generator(device=unet.device).manual_seed(seed)
    cfg = guidance_scale > 1.0

    n = img2img_steps(steps, strength)
    scheduler.set_timesteps(n, device=unet.device)
    start = n - min(int(n * strength), n)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)

    latents = encode_latents(vae, image)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    latents = scheduler.add_noise(latents, noise, timesteps[:1])

    embeds = torch.cat([prompt.negative_embeds, prompt.embeds]) if cfg else prompt.embeds
    timestep_cond = guidance_embedding(unet, guidance_scale, embeds.shape[0])
    result = latents
    for t in timesteps:
        model_input = torch.cat([latents] * 2) if cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        extra = unet_kwargs(model_input, t) if unet_kwargs else {}
        noise_pred = unet(
            model_input, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond, return_dict=False, **extra
        )[0]
        if cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        out = scheduler.step(noise_pred, t, latents, generator=generator, return_dict=True)
        latents = out.prev_sample
        # LCM's output is its denoised estimate; other schedulers end on prev_sample.
        result = getattr(out, "denoised", None)
        if result is None:
            result = latents
    return decode_latents(vae, result)


# The noise schedule every Stable Diffusion 1.x/2.x/XL model was trained with (their scheduler configs).
SD_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def build_pipeline(
    cls: Any,
    options: ModelOptions,
    default_model_id: str,
    dtype: torch.dtype,
    tiny_components: Callable[[], dict[str, Any]],
    **kwargs: Any,
) -> Any:
    """The diffusers pipeline `cls` from --model-id (or the default model), or from miniature components."""
    if options.tiny:
        components = {
            name: _cast(component, dtype) if isinstance(component, torch.nn.Module) else component
            for name, component in tiny_components().items()
        }
        return cls(**components, **kwargs)
    return load_pipeline(cls, options.model_id or default_model_id, dtype, options.model_config_id, **kwargs)


SAFETY_CHECKER_ID = "CompVis/stable-diffusion-safety-checker"


class SafetyChecker:
    """Stable Diffusion's safety checker: a frame it flags comes out black."""

    def __init__(self, options: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        from pipelines import tiny

        if options.tiny:
            model, self.processor = tiny.tiny_safety_checker()
            self.model = _cast(model, dtype)
        else:
            self.model = load_model(StableDiffusionSafetyChecker, SAFETY_CHECKER_ID, dtype)
            self.processor = CLIPImageProcessor.from_pretrained(SAFETY_CHECKER_ID)
        self.model.to(device)

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> Image.Image:
        pixels = self.processor(images=image, return_tensors="pt").pixel_values
        clip_input = pixels.to(device=self.model.device, dtype=self.model.dtype)
        _, flagged = self.model(images=[np.zeros(1)], clip_input=clip_input)
        return Image.new("RGB", image.size) if flagged[0] else image
