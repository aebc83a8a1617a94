"""Mechanics shared by every pipeline, written once: device and dtype, model loading (hub id, local
folder, single-file checkpoint, miniature), TAESD, prompt embeddings (compel, cached), image <->
tensor, the img2img denoising loop, channels_last and torch.compile.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from pipelines.base import BatchPipeline, ModelOptions, ParamsModel

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


class ModelLoadError(RuntimeError):
    """A model that cannot be used; the message says why and what to do."""


class ModelUnavailable(ModelLoadError):
    """A model that is neither on disk nor downloadable."""


class ModelMismatch(ModelLoadError):
    """A model whose architecture does not fit the pipeline."""


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
        try:
            return cls.from_single_file(str(path), dtype=dtype, config=config_id or None, **kwargs)
        except OSError as error:
            if config_id:
                raise
            # diffusers looks for the configs of the checkpoint's base model on the hub.
            raise ModelUnavailable(
                f"Single-file checkpoint {model_id!r} needs the configs of its base model, which are not in the "
                "local cache and cannot be downloaded. Pass --model-config-id with a local diffusers folder (or "
                f"cached hub id) of the same architecture, or connect to the hub. ({type(error).__name__})"
            ) from None
    if path.is_dir():
        log.info("Loading diffusers folder %s", path)
        return cls.from_pretrained(str(path), dtype=dtype, **kwargs)
    if path.exists() or model_id.startswith((".", "/", "~")) or model_id.endswith(SINGLE_FILE_SUFFIXES):
        raise ModelUnavailable(
            f"--model-id {model_id!r}: expected a hub id, a diffusers folder or a "
            f"{'/'.join(SINGLE_FILE_SUFFIXES)} file, and found no such folder or file."
        )
    ensure_hub_model(model_id)
    log.info("Loading %s from the Hugging Face hub cache (downloading what is missing)", model_id)
    return cls.from_pretrained(model_id, dtype=dtype, **kwargs)


def load_model(cls: Any, model_id: str, dtype: torch.dtype, **kwargs: Any) -> Any:
    """Load one model (an autoencoder, a ControlNet) from a hub id or a local folder."""
    if not Path(model_id).expanduser().is_dir():
        ensure_hub_model(model_id)
    return cls.from_pretrained(model_id, dtype=dtype, **kwargs)


def swap_in_taesd(pipe: Any, options: ModelOptions, repo: str, build_tiny: Callable[[], Any]) -> None:
    """Replace the full VAE by TAESD: about 10x cheaper to encode and decode, near the same look."""
    if not options.taesd:
        return
    dtype = pipe.unet.dtype
    pipe.vae = _cast(build_tiny(), dtype) if options.tiny else load_model(AutoencoderTiny, repo, dtype)


def _cast(model: Any, dtype: torch.dtype) -> Any:
    # What from_pretrained(dtype=...) does for loaded models; diffusers' own .to() warns about it.
    return torch.nn.Module.to(model, dtype=dtype)


def optimize(pipe: Any, options: ModelOptions, device: torch.device) -> None:
    """Move to the device (the models are in the run dtype already: loaded or built in it),
    channels_last, and torch.compile when asked."""
    pipe.to(device=device)
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
                negative_prompt=negative_prompt,
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


# --- denoising ------------------------------------------------------------------------------------


def img2img_steps(steps: int, strength: float) -> int:
    """Schedule length so that int(n * strength) >= 1: at least one denoising step always runs."""
    n = steps
    while int(n * strength) < 1:
        n += 1
    return n


@contextmanager
def _quiet(scheduler: Any) -> Iterator[None]:
    scheduler_log = logging.getLogger(type(scheduler).__module__)
    level = scheduler_log.level
    scheduler_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        scheduler_log.setLevel(level)


def img2img_timesteps(scheduler: Any, steps: int, strength: float) -> list[int]:
    """The timesteps an image-to-image frame runs: int(n * strength) steps (at least one) of the
    n-step schedule, as diffusers does, but starting from the noise level `strength` asks for, so
    strength stays a continuous knob even at one or two steps."""
    n = img2img_steps(steps, strength)
    scheduler.set_timesteps(n)
    tail = [int(t) for t in scheduler.timesteps[n - int(n * strength) :]]
    train_steps = scheduler.config.num_train_timesteps
    first = round(strength * train_steps) - 1
    original_steps = getattr(scheduler.config, "original_inference_steps", None)
    if original_steps:  # LCM: stay on the timesteps it was distilled on
        stride = train_steps // original_steps
        first = max(1, round((first + 1) / stride)) * stride - 1
    return [max(first, tail[0]), *tail[1:]]


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
    control: Control | None = None,
) -> torch.Tensor:
    """Denoise a batch of frames (one prompt and seed each, everything else shared) with the pipe's
    unet, vae and scheduler; returns Nx3xHxW in [-1, 1].

    With images: encode them, noise them to `strength`, run int(n * strength) steps of an n-step
    schedule (at least one), decode. With `images=None` (text to image): start from pure noise of
    width x height and run all `steps`. Guidance above 1 runs classifier-free guidance against the
    negative prompts (a second UNet pass). SDXL's pooled embeddings and size conditioning, and a
    ControlNet, are used when given. Each frame's output depends only on its own inputs and seed.
    """
    lengths = [prompt.embeds.shape[1] for prompt in prompts]
    if len(set(lengths)) > 1:  # compel encodes long prompts in more 77-token chunks: a batch per length
        return _denoise_by_length(pipe, images, prompts, lengths, seeds=seeds, steps=steps, strength=strength,
                                  guidance_scale=guidance_scale, width=width, height=height, control=control)
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    device, dtype = unet.device, unet.dtype
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    cfg = guidance_scale > 1.0

    if images is None:
        scheduler.set_timesteps(steps, device=device)
    else:
        with _quiet(scheduler):  # LCM warns that a schedule not starting at 999 is unusual: here it is the point
            scheduler.set_timesteps(timesteps=img2img_timesteps(scheduler, steps, strength), device=device)
    timesteps = scheduler.timesteps

    def noise(shape: tuple[int, ...]) -> torch.Tensor:  # each frame's noise from its own seed
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generators])

    if images is None:
        factor = pipe.vae_scale_factor
        latents = noise((len(seeds), unet.config.in_channels, height // factor, width // factor))
        latents = latents * scheduler.init_noise_sigma
    else:
        latents = encode_latents(vae, images)
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
    control_image = None
    if control is not None:
        control_image = control.image.to(device=device, dtype=dtype)
        control_image = torch.cat([control_image] * (batch // len(seeds)))

    result = latents
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]) if cfg else latents, t)
        residuals = {}
        if control is not None and control.start <= i / len(timesteps) and (i + 1) / len(timesteps) <= control.end:
            down, mid = control.controlnet(
                model_input, t, encoder_hidden_states=embeds, controlnet_cond=control_image,
                conditioning_scale=control.scale, added_cond_kwargs=added_cond, return_dict=False,
            )
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise_pred = unet(
            model_input, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
            added_cond_kwargs=added_cond, return_dict=False, **residuals,
        )[0]
        if cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        out = scheduler.step(noise_pred, t, latents, generator=generators, return_dict=True)
        latents = out.prev_sample
        # LCM's output is its denoised estimate; other schedulers end on prev_sample.
        result = getattr(out, "denoised", None)
        if result is None:
            result = latents
    return decode_latents(vae, result)


def _denoise_by_length(pipe: Any, images: torch.Tensor | None, prompts: Sequence[PromptEmbeds], lengths: list[int],
                       *, seeds: Sequence[int], control: Control | None, **shared: Any) -> torch.Tensor:
    outputs: dict[int, torch.Tensor] = {}
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        part_control = None if control is None else replace(control, image=control.image[rows])
        part = denoise(
            pipe, None if images is None else images[rows], [prompts[i] for i in rows],
            seeds=[seeds[i] for i in rows], control=part_control, **shared,
        )
        outputs.update(zip(rows, part))
    return torch.stack([outputs[i] for i in range(len(lengths))])


# The noise schedule every Stable Diffusion 1.x/2.x/XL model was trained with (their scheduler configs).
SD_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


# SD 1.x/2.x pipelines are built without their own safety checker: the server's --safety-checker
# runs after any pipeline.
NO_SAFETY_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


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
        return cls(**(kwargs | components))  # miniature components replace loaded ones
    model_id = options.model_id or default_model_id
    try:
        pipe = load_pipeline(cls, model_id, dtype, options.model_config_id, **kwargs)
    except ModelLoadError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as error:
        raise ModelMismatch(f"Model {model_id!r} could not be loaded as {cls.__name__}: {error}") from error
    check_fits(pipe, model_id)
    return pipe


def check_fits(pipe: Any, model_id: str) -> None:
    """Refuse, at start-up, a model whose UNet and text encoders do not belong together."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    width = sum(
        encoder.config.hidden_size
        for encoder in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        if encoder is not None
    )
    unet = pipe.unet.config
    kind = "SDXL" if sdxl else "Stable Diffusion 1.x/2.x"
    if unet.cross_attention_dim != width or sdxl != (unet.addition_embed_type == "text_time"):
        raise ModelMismatch(
            f"Model {model_id!r} does not fit this {kind} pipeline: its UNet takes {unet.cross_attention_dim}-wide "
            f"text embeddings{' with SDXL conditioning' if unet.addition_embed_type == 'text_time' else ''}, "
            f"its text encoders give {width}. Pick the pipeline of its family (--list-pipelines)."
        )


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


# --- LoRAs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    """`--lora ID_OR_PATH[:WEIGHT]`: a hub id, a folder or a .safetensors file, and its weight."""

    source: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> LoraSpec:
        source, colon, weight = spec.rpartition(":")
        if colon and source:
            try:
                return cls(source, float(weight))
            except ValueError:
                pass  # a colon that is part of the path
        return cls(spec)


def load_lora(pipe: Any, source: str | dict[str, torch.Tensor], adapter_name: str) -> None:
    """Load one LoRA through peft from a hub id, a folder, a .safetensors file or a state dict."""
    if isinstance(source, dict):
        pipe.load_lora_weights(source, adapter_name=adapter_name)
        return
    path = Path(source).expanduser()
    if path.is_file():
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    elif path.is_dir():
        pipe.load_lora_weights(str(path), adapter_name=adapter_name)
    elif source.startswith((".", "/", "~")) or source.endswith(SINGLE_FILE_SUFFIXES):
        raise ModelUnavailable(f"--lora {source!r}: no such file or folder")
    else:
        ensure_hub_model(source)
        pipe.load_lora_weights(source, adapter_name=adapter_name)


def fuse_lora(pipe: Any, source: str | dict[str, torch.Tensor], adapter_name: str) -> None:
    """Load a LoRA and fuse it into the weights (no per-step cost), as the LCM-LoRA is."""
    load_lora(pipe, source, adapter_name)
    pipe.fuse_lora(adapter_names=[adapter_name])
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter layers


class Loras:
    """The user's LoRAs (`--lora`): peft adapters with their weights and a live `lora_scale`
    parameter, or fused into the weights (`--fuse-loras`: fastest, no live scale)."""

    def __init__(self, pipe: Any, specs: tuple[str, ...], *, fuse: bool) -> None:
        self.pipe = pipe
        self.specs = [LoraSpec.parse(spec) for spec in specs]
        self.names = [f"lora_{i}" for i in range(len(self.specs))]
        self.live = bool(self.specs) and not fuse
        self._scale: float | None = None
        for name, spec in zip(self.names, self.specs):
            log.info("Loading LoRA %s (weight %g)", spec.source, spec.weight)
            load_lora(pipe, spec.source, name)
        if self.specs:
            pipe.set_adapters(self.names, [spec.weight for spec in self.specs])
        if self.specs and fuse:
            pipe.fuse_lora(adapter_names=self.names)
            pipe.unload_lora_weights()

    def params_type(self, base: type[ParamsModel]) -> type[ParamsModel]:
        """`base`, plus a `lora_scale` parameter when LoRAs are live adapters."""
        if not self.live:
            return base
        from pydantic import create_model

        from pipelines.base import range_field

        return create_model(
            base.__name__, __base__=base,
            lora_scale=(float, range_field(1.0, 0.0, 2.0, 0.01, "LoRA scale", description="Multiplies every --lora weight")),
        )

    def apply(self, params: ParamsModel) -> None:
        if self.live and params.lora_scale != self._scale:  # type: ignore[attr-defined]
            self._scale = params.lora_scale  # type: ignore[attr-defined]
            self.pipe.set_adapters(self.names, [spec.weight * self._scale for spec in self.specs])


# --- the pipeline base ----------------------------------------------------------------------------


class DiffusersPipeline(BatchPipeline):
    """What every pipeline here shares once its module has built `self.pipe` (a diffusers pipeline
    holding the unet, vae, text encoders and scheduler): the user's LoRAs and their `lora_scale`
    parameter, TAESD, device, dtype and compile, the prompt cache, and the frame loop: crop each frame
    to the requested size, denoise the batch (image to image, or text to image without frames)."""

    pipe: Any

    def setup(
        self,
        config: ModelOptions,
        device: torch.device,
        dtype: torch.dtype,
        params: type[ParamsModel],
        *,
        taesd_id: str,
        tiny_taesd: Callable[[], Any],
        sdxl: bool = False,
    ) -> None:
        self.loras = Loras(self.pipe, config.loras, fuse=config.fuse_loras)
        self.InputParams = self.loras.params_type(params)
        swap_in_taesd(self.pipe, config, taesd_id, tiny_taesd)
        optimize(self.pipe, config, device)
        self.prompts = PromptCache(self.pipe, use_compel=config.compel, sdxl=sdxl)

    @torch.inference_mode()
    def predict_batch(self, batch: list[Any], images: list[Image.Image | None]) -> list[Image.Image]:
        return self.generate(batch, self.frames(batch[0], images))

    def frames(self, shared: Any, images: list[Image.Image | None]) -> list[Image.Image] | None:
        """The input frames cropped to fill the requested size; None for text to image."""
        if images[0] is None:
            return None
        return [crop_to_fill(image, shared.width, shared.height) for image in images]

    def generate(self, batch: list[Any], frames: list[Image.Image] | None, control: Control | None = None) -> list[Image.Image]:
        shared = batch[0]  # a batch shares every parameter but the prompts and the seed
        self.loras.apply(shared)
        unet = self.pipe.unet
        output = denoise(
            self.pipe,
            None if frames is None else images_to_tensor(frames, unet.device, unet.dtype),
            [self.prompts(params.prompt, params.negative_prompt) for params in batch],
            seeds=[params.seed for params in batch],
            steps=shared.steps,
            strength=getattr(shared, "strength", 1.0),
            guidance_scale=shared.guidance_scale,
            width=shared.width,
            height=shared.height,
            control=control,
        )
        return tensor_to_images(output)
