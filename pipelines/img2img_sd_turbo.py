"""SD-Turbo image-to-image: stabilityai/sd-turbo, one UNet call a frame, no guidance pass."""

from __future__ import annotations

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

from pipelines import (
    ModelOptions,
    ParamsModel,
    PipelineInfo,
    guidance_field,
    negative_prompt_field,
    prompt_field,
    seed_field,
    size_field,
    steps_field,
    strength_field,
    temporal_field,
)
from pipelines import _tiny as tiny
from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS, build_pipeline
from pipelines._pipeline import DiffusersPipeline

MODEL_ID = "stabilityai/sd-turbo"
TAESD_ID = "madebyollin/taesd"  # SD 2.x shares SD 1.x's latent space

PAGE_CONTENT = """
# Image-to-Image SD-Turbo

[SD-Turbo](https://huggingface.co/stabilityai/sd-turbo), distilled from Stable Diffusion 2.1 to
draw in a single step: the fastest pipeline here. Guidance is off (0), so each frame is one UNet call.
"""


class Info(PipelineInfo):
    name: str = "img2img_sd_turbo"
    title: str = "Image-to-Image SD-Turbo"
    description: str = "Redraws the camera with SD-Turbo in one step"
    page_content: str = PAGE_CONTENT


class InputParams(ParamsModel):
    prompt: str = prompt_field("a cinematic portrait, dramatic light, film grain, highly detailed")
    negative_prompt: str = negative_prompt_field()
    seed: int = seed_field(2159232)
    steps: int = steps_field(1, le=10)
    guidance_scale: float = guidance_field(0.0, "Turbo models are trained without guidance; above 1 costs a second UNet pass")
    strength: float = strength_field()
    temporal_consistency: float = temporal_field()
    width: int = size_field(512, "Width")
    height: int = size_field(512, "Height")


class Pipeline(DiffusersPipeline):
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = build_pipeline(
            StableDiffusionImg2ImgPipeline,
            config,
            MODEL_ID,
            dtype,
            tiny_components=lambda: {
                **tiny.tiny_sd21(),
                "scheduler": EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing"),
            },
            **NO_SAFETY_CHECKER,
        )
        self.setup(config, device, dtype, InputParams, taesd_id=TAESD_ID, tiny_taesd=tiny.tiny_taesd)
