"""pix2pix-turbo: SD-Turbo made a one-step image translator (Parmar, Park, Narasimhan, Zhu, "One-Step
Image Translation with Text-to-Image Models", 2024), here its edge-to-image model.

What the paper adds to SD-Turbo, and the published weights carry:
- LoRA adapters on the UNet (and its first convolution trained in full) and on the VAE;
- skip connections from the VAE encoder to the decoder: each encoder block's input, through a 1x1
  convolution, is added to the input of the decoder block at the same resolution, scaled by `gamma`;
- one step at timestep 999 from the *encoded input itself* (no noise): the UNet's prediction gives
  the clean latent, which the decoder (with the skips) turns into the image.

Its stochastic variant blends with a fidelity `r` in [0, 1]: the UNet sees r * encoded input +
(1 - r) * noise, every adapter's scale and the skips' gamma are r. r = 1 is the deterministic model.

The published weights (`edge_to_image_loras.pkl`, a torch.save'd dict) hold the adapters' ranks and
target modules and the trained tensors, named as in peft-adapted diffusers models: the UNet's adapter
is "default", the VAE's "vae_skip", and the skips are `decoder.skip_conv_1` (deepest) to `_4`.
The adapters were trained with peft's default lora_alpha (8), which is what they are loaded with.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor

from pipelines._base import ModelMismatch, ModelUnavailable
from pipelines._denoise import placement
from pipelines._loading import model_file

log = logging.getLogger(__name__)

PUBLISHED_WEIGHTS = "https://www.cs.cmu.edu/~img2img-turbo/models/edge_to_image_loras.pkl"
TIMESTEP = 999  # the one timestep pix2pix-turbo was trained at
UNET_ADAPTER = "default"  # the adapter names the published tensors carry
VAE_ADAPTER = "vae_skip"
MAX_DOWNLOAD_BYTES = 4 * 2**30
WEIGHT_KEYS = {
    "rank_unet": int, "unet_lora_target_modules": list, "state_dict_unet": dict,
    "rank_vae": int, "vae_lora_target_modules": list, "state_dict_vae": dict,
}
# The modules the paper's code adapts (its training script's lists): the miniature weights use them too.
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]
VAE_TARGETS = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out",
               "skip_conv_1", "skip_conv_2", "skip_conv_3", "skip_conv_4", "to_k", "to_q", "to_v", "to_out.0"]


# --- the weights ---

def read_weights(source: str) -> dict[str, Any]:
    """The published weights' dict from a local file, an http(s) URL (downloaded once into the Hugging
    Face cache folder) or a file in a hub repository ("owner/repo/path.pkl"). Loaded with
    `weights_only`: a file that holds anything but tensors, numbers, text and lists is refused."""
    path = _download(source) if source.startswith(("https://", "http://")) else model_file(source, "--pix2pix-weights")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:  # not a torch file, or one holding objects
        raise ModelMismatch(f"pix2pix-turbo weights {source!r} could not be read: {str(error).splitlines()[0][:200]}") from None
    return check_layout(weights, source)


def check_layout(weights: Any, source: str) -> dict[str, Any]:
    if not isinstance(weights, dict) or any(not isinstance(weights.get(k), t) for k, t in WEIGHT_KEYS.items()):
        raise ModelMismatch(
            f"pix2pix-turbo weights {source!r} are not in the published layout (a dict of "
            f"{', '.join(WEIGHT_KEYS)})."
        )
    return weights


def _download(url: str) -> Path:
    """The file at `url`, fetched once into <HF_HOME>/live-diffusion/ (where `--tiny`-less runs keep
    models); offline (HF_HUB_OFFLINE) only the cached copy is used."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HOME) / "live-diffusion"
    target = folder / url.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"pix2pix-turbo weights {url} are not cached ({target}) and HF_HUB_OFFLINE is set: download the "
            "file elsewhere and pass --pix2pix-weights PATH."
        )
    log.info("Downloading %s to %s", url, target)
    folder.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkstemp(dir=folder, prefix=".part-")[1])  # renamed once whole: never half a file
    try:
        with urllib.request.urlopen(url, timeout=30) as response, part.open("wb") as out:
            copied = 0
            while chunk := response.read(2**20):
                copied += len(chunk)
                if copied > MAX_DOWNLOAD_BYTES:
                    raise ModelMismatch(f"{url} is larger than {MAX_DOWNLOAD_BYTES >> 30} GiB: not pix2pix-turbo weights")
                out.write(chunk)
        os.replace(part, target)
    except (urllib.error.URLError, OSError) as error:
        raise ModelUnavailable(
            f"pix2pix-turbo weights could not be downloaded from {url} ({error}): connect to the internet, or "
            "download the file elsewhere and pass --pix2pix-weights PATH."
        ) from None
    finally:
        part.unlink(missing_ok=True)
    return target


def add_skip_convs(vae: torch.nn.Module) -> None:
    """The 1x1 convolutions of the skips, on the decoder: `skip_conv_{i+1}` takes the input of encoder
    block n-1-i to the input of decoder block i (same resolution). For SD's VAE: 512->512, 256->512,
    128->512, 128->256."""
    channels = list(vae.config.block_out_channels)
    blocks = len(channels)
    for i in range(blocks):
        encoder_in = channels[max(blocks - 2 - i, 0)]
        decoder_in = channels[::-1][max(i - 1, 0)]
        conv = torch.nn.Conv2d(encoder_in, decoder_in, kernel_size=1, bias=False)
        torch.nn.init.constant_(conv.weight, 1e-5)  # the paper's start: near zero, the plain VAE
        setattr(vae.decoder, f"skip_conv_{i + 1}", conv)


def apply_weights(unet: torch.nn.Module, vae: torch.nn.Module, weights: dict[str, Any], source: str) -> None:
    """Adapt the UNet and the VAE as the weights say (skips, LoRA adapters) and load their tensors.
    Tensors of another architecture, or names the adapted models lack, raise ModelMismatch."""
    from peft import LoraConfig, inject_adapter_in_model

    add_skip_convs(vae)
    try:
        inject_adapter_in_model(
            LoraConfig(r=weights["rank_unet"], target_modules=weights["unet_lora_target_modules"]), unet, UNET_ADAPTER
        )
        inject_adapter_in_model(
            LoraConfig(r=weights["rank_vae"], target_modules=weights["vae_lora_target_modules"]), vae, VAE_ADAPTER
        )
    except ValueError as error:  # target modules the models do not have
        raise ModelMismatch(f"pix2pix-turbo weights {source!r} do not fit this model: {error}") from None
    for name, model, state in (("UNet", unet, weights["state_dict_unet"]), ("VAE", vae, weights["state_dict_vae"])):
        own = model.state_dict()
        unknown = [key for key in state if key not in own]
        wrong = [key for key in state if key in own and own[key].shape != state[key].shape]
        if unknown or wrong:
            raise ModelMismatch(
                f"pix2pix-turbo weights {source!r} do not fit this {name} (SD-Turbo's is the one they were trained "
                f"on): {len(unknown)} tensors it lacks{f' ({unknown[0]}, ...)' if unknown else ''}, {len(wrong)} of "
                f"another shape{f' ({wrong[0]}, ...)' if wrong else ''}."
            )
        model.load_state_dict(state, strict=False)  # the base weights stay as loaded


def tiny_weights(unet: torch.nn.Module, vae: torch.nn.Module, seed: int = 0) -> dict[str, Any]:
    """Miniature weights in the published layout for copies of `unet` and `vae` (--tiny, and the tests'
    files): random adapters and skips, large enough to change the output."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    from pipelines._tiny import _seeded

    unet, vae = copy.deepcopy(unet), copy.deepcopy(vae)
    with _seeded(seed):
        add_skip_convs(vae)
        inject_adapter_in_model(LoraConfig(r=4, target_modules=UNET_TARGETS), unet, UNET_ADAPTER)
        inject_adapter_in_model(LoraConfig(r=4, target_modules=VAE_TARGETS), vae, VAE_ADAPTER)
        for model in (unet, vae):
            for key, tensor in model.state_dict().items():
                if "lora_B" in key or "skip_conv" in key:
                    tensor.copy_(torch.randn_like(tensor) * 0.05)
        torch.nn.init.normal_(unet.conv_in.weight, std=0.05)
    return {
        "rank_unet": 4, "unet_lora_target_modules": UNET_TARGETS,
        "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "rank_vae": 4, "vae_lora_target_modules": VAE_TARGETS,
        "state_dict_vae": {k: v for k, v in vae.state_dict().items() if "lora" in k or "skip" in k},
    }


# --- the model ---

def scharr_edges(images: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Edges of a batch of RGB images in [0, 1] (B, 3, H, W), as the edge-to-image model was used:
    Scharr gradient magnitude of the luma (borders replicated), divided by each image's largest, then at or below `low`
    set to 0 and at or above `high` to 1. Returns (B, 3, H, W) in [0, 1]."""
    luma = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kernel_x = images.new_tensor([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]])
    kernels = torch.stack([kernel_x, kernel_x.T]).unsqueeze(1)
    # Replicated borders: the anchor's zero padding draws the frame's edge as a line the model paints.
    gradients = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradients.square().sum(1, keepdim=True).sqrt()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)  # a flat frame has no edges, not NaN
    edges = magnitude / peak
    edges = torch.where(edges >= high, torch.ones_like(edges), edges)
    edges = torch.where(edges <= low, torch.zeros_like(edges), edges)
    return edges.expand(-1, 3, -1, -1)


def encode_with_skips(vae: Any, images: torch.Tensor) -> tuple[DiagonalGaussianDistribution, list[torch.Tensor]]:
    """AutoencoderKL.encode, keeping the input of each encoder block for the decoder's skips."""
    encoder = vae.encoder
    hidden = encoder.conv_in(images)
    skips = []
    for block in encoder.down_blocks:
        skips.append(hidden)
        hidden = block(hidden)
    hidden = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(encoder.mid_block(hidden))))
    if vae.quant_conv is not None:
        hidden = vae.quant_conv(hidden)
    return DiagonalGaussianDistribution(hidden), skips


def decode_with_skips(vae: Any, latents: torch.Tensor, skips: list[torch.Tensor], gamma: float) -> torch.Tensor:
    """AutoencoderKL.decode with the skips: before decoder block i, add skip_conv_{i+1} of the encoder's
    block n-1-i input times gamma."""
    decoder = vae.decoder
    if vae.post_quant_conv is not None:
        latents = vae.post_quant_conv(latents)
    hidden = decoder.mid_block(decoder.conv_in(latents), None)
    for i, block in enumerate(decoder.up_blocks):
        skip_conv = getattr(decoder, f"skip_conv_{i + 1}")
        hidden = block(hidden + skip_conv(skips[-1 - i] * gamma), None)
    return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(hidden)))


def clean_latents(scheduler: Any, prediction: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The clean latent the UNet's prediction at TIMESTEP implies (what a one-step DDPM step returns)."""
    alpha = scheduler.alphas_cumprod[TIMESTEP].to(sample.device, torch.float32)
    kind = scheduler.config.prediction_type
    sample32, prediction32 = sample.float(), prediction.float()
    if kind == "epsilon":
        clean = (sample32 - (1 - alpha).sqrt() * prediction32) / alpha.sqrt()
    elif kind == "v_prediction":
        clean = alpha.sqrt() * sample32 - (1 - alpha).sqrt() * prediction32
    else:
        clean = prediction32
    if scheduler.config.clip_sample:  # as DDPMScheduler.step does (sd-turbo's config turns it off)
        clean = clean.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    return clean.to(sample.dtype)


def set_fidelity(models: Sequence[torch.nn.Module], r: float) -> None:
    """Every adapter's scale at r (peft: r * lora_alpha / rank)."""
    from peft.tuners.lora import LoraLayer

    for model in models:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.lora_A:
                    module.set_scale(adapter, r)


@dataclass
class Pix2PixTurbo:
    """The edge-to-image model on a diffusers pipeline's UNet, VAE and scheduler (adapted by
    `apply_weights`)."""

    unet: Any
    vae: Any
    scheduler: Any
    fidelity: float = 1.0

    def __call__(
        self, control: torch.Tensor, prompt_embeds: torch.Tensor, generators: list[torch.Generator], r: float = 1.0
    ) -> torch.Tensor:
        """Images in [-1, 1] for control images in [0, 1] (B, 3, H, W), one generator a frame (its seed)."""
        if r != self.fidelity:
            set_fidelity((self.unet, self.vae), r)
            self.fidelity = r
        dtype = placement(self.unet)[1]
        posterior, skips = encode_with_skips(self.vae, control.to(dtype))
        shape = posterior.mean.shape
        noise = randn_tensor(shape, generator=generators, device=control.device, dtype=dtype) if r < 1 else None
        latents = posterior.sample(generators) * self.vae.config.scaling_factor
        if noise is not None:
            latents = latents * r + noise * (1 - r)
        timestep = torch.full((shape[0],), TIMESTEP, device=control.device, dtype=torch.long)
        prediction = self.unet(latents, timestep, encoder_hidden_states=prompt_embeds).sample
        clean = clean_latents(self.scheduler, prediction, latents)
        return decode_with_skips(self.vae, clean / self.vae.config.scaling_factor, skips, r).clamp(-1, 1)
