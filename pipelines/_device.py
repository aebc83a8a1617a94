"""Where and in what precision the models run: the device and dtype `auto` resolves to, and how a
loaded pipeline is moved there (channels_last, torch.compile)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from pipelines._base import ModelOptions

log = logging.getLogger(__name__)


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


def default_temporal_budget(device: torch.device) -> int:
    """Bytes the temporal-consistency memories of all streams may hold together unless told otherwise:
    a tenth of a GPU's memory (the model and its activations need the rest), 1 GiB elsewhere."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 10
    return 2**30


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
