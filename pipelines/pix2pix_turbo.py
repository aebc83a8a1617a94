"""pix2pix-turbo edge to image: the camera's edges redrawn by SD-Turbo with the paper's edge-to-image
adapters and VAE skips, in one UNet call (pipelines/_pix2pix.py)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from PIL import Image
from pydantic import model_validator

from pipelines import (
    BatchPipeline,
    ModelMismatch,
    ModelOptions,
    ParamsModel,
    PipelineInfo,
    checkbox_field,
    prompt_field,
    range_field,
    seed_field,
    size_field,
)
from pipelines import _tiny as tiny
from pipelines._denoise import placement, tensor_to_images
from pipelines._device import optimize
from pipelines._images import crop_to_fill
from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS, build_pipeline
from pipelines._pix2pix import PUBLISHED_WEIGHTS, Pix2PixTurbo, apply_weights, read_weights, scharr_edges, tiny_weights
from pipelines._prompts import PromptCache

MODEL_ID = "stabilityai/sd-turbo"

PAGE_CONTENT = """
# pix2pix-turbo: edges to image

[One-Step Image Translation with Text-to-Image Models](https://github.com/GaParmar/img2img-turbo):
the camera's edges (Scharr) become a picture of the prompt in a single step of SD-Turbo.
Untick **Deterministic** and lower **Noise R** to let it invent more; the **edge thresholds** choose
which lines it keeps. **Debug edges** shows the edge map in a corner.
"""


class Info(PipelineInfo):
    name: str = "pix2pix_turbo"
    title: str = "pix2pix-turbo"
    description: str = "Redraws the camera's edges with pix2pix-turbo (SD-Turbo, one step)"
    page_content: str = PAGE_CONTENT


class InputParams(ParamsModel):
    # Named as the anchor's pix2pixTurbo module names them, so its clients keep working.
    prompt: str = prompt_field("close-up photo of the joker")
    seed: int = seed_field(2159232)
    deterministic: bool = checkbox_field(True, "Deterministic")
    noise_r: float = range_field(
        1.0, 0.0, 1.0, 0.01, "Noise R",
        description="Unless deterministic: how much of the input it keeps (1) against fresh noise (0)",
    )
    canny_low_threshold: float = range_field(0.0, 0.0, 1.0, 0.01, "Edge low threshold", hide=True)
    canny_high_threshold: float = range_field(1.0, 0.0, 1.0, 0.01, "Edge high threshold", hide=True)
    debug_canny: bool = checkbox_field(False, "Debug edges", hide=True)
    width: int = size_field(512, "Width")
    height: int = size_field(512, "Height")

    @model_validator(mode="after")
    def _ordered(self) -> InputParams:
        if self.canny_low_threshold > self.canny_high_threshold:
            raise ValueError(
                f"canny_low_threshold ({self.canny_low_threshold}) must not exceed "
                f"canny_high_threshold ({self.canny_high_threshold})"
            )
        return self


class Pipeline(BatchPipeline):
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        if config.loras:
            raise ModelMismatch("pix2pix-turbo takes no --lora: its own adapters are the model")
        self.pipe = build_pipeline(
            StableDiffusionPipeline,
            config,
            MODEL_ID,
            dtype,
            tiny_components=lambda: {**tiny.tiny_sd21(), "scheduler": DDPMScheduler(**SD_BETAS, clip_sample=False)},
            **NO_SAFETY_CHECKER,
        )
        unet, vae = self.pipe.unet, self.pipe.vae  # the full VAE always: TAESD has no skips to carry
        source = "(miniature)" if config.tiny else config.pix2pix_weights or PUBLISHED_WEIGHTS
        apply_weights(unet, vae, tiny_weights(unet, vae) if config.tiny else read_weights(source), source)
        for model in (unet, vae):
            torch.nn.Module.to(model, dtype=dtype)  # the adapters' new layers, in the run dtype
        optimize(self.pipe, config, device)  # may compile the UNet: the model takes the pipeline's, after
        self.model = Pix2PixTurbo(self.pipe.unet, self.pipe.vae, DDPMScheduler.from_config(self.pipe.scheduler.config))
        self.prompts = PromptCache(self.pipe, use_compel=config.compel)

    @torch.inference_mode()
    def predict_batch(self, batch: list[InputParams], images: list[Image.Image]) -> list[Image.Image]:
        shared = batch[0]  # a batch shares every parameter but the prompts and the seed
        device, dtype = placement(self.pipe.unet)
        frames = np.stack([np.asarray(crop_to_fill(image, shared.width, shared.height).convert("RGB")) for image in images])
        pixels = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div_(255)
        edges = scharr_edges(pixels, shared.canny_low_threshold, shared.canny_high_threshold)
        embeds = torch.cat([self.prompts(params.prompt).embeds for params in batch])
        generators = [torch.Generator(device).manual_seed(params.seed) for params in batch]
        output = self.model(edges.to(dtype), embeds, generators, 1.0 if shared.deterministic else shared.noise_r)
        outputs = tensor_to_images(output)
        if shared.debug_canny:
            outputs = [with_edges_in_corner(out, edge) for out, edge in zip(outputs, edges[:, 0])]
        return outputs


def with_edges_in_corner(output: Image.Image, edges: torch.Tensor) -> Image.Image:
    """The edge map at a quarter of the size, in the bottom-right corner."""
    inset = Image.fromarray(edges.float().mul(255).round().byte().cpu().numpy()).convert("RGB")
    inset = inset.resize((output.width // 4, output.height // 4))
    output.paste(inset, (output.width - inset.width, output.height - inset.height))
    return output
