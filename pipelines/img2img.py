"""LCM image-to-image: SimianLuo/LCM_Dreamshaper_v7, 2 to 4 UNet calls a frame."""

from __future__ import annotations

import torch
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline

from pipelines import (
    LCM_GUIDANCE,
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

MODEL_ID = "SimianLuo/LCM_Dreamshaper_v7"
TAESD_ID = "madebyollin/taesd"

DEFAULT_PROMPT = (
    "Portrait of The Terminator with glare pose, detailed, intricate, full of colour, cinematic lighting, "
    "trending on artstation, 8k, hyperrealistic, focused, extreme details, masterpiece"
)

PAGE_CONTENT = """
# Image-to-Image LCM

Your camera, redrawn by [Latent Consistency Model](https://huggingface.co/SimianLuo/LCM_Dreamshaper_v7)
Dreamshaper v7 in a few steps a frame. Describe what you want to see; prompts take
[compel](https://github.com/damian0815/compel/blob/main/doc/syntax.md) weights, e.g. `a (red)++ cat`.
**Strength** sets how far the output may stray from the camera.
"""


class Info(PipelineInfo):
    name: str = "img2img"
    title: str = "Image-to-Image LCM"
    description: str = "Redraws the camera with LCM Dreamshaper v7"
    page_content: str = PAGE_CONTENT


class InputParams(ParamsModel):
    prompt: str = prompt_field(DEFAULT_PROMPT)
    negative_prompt: str = negative_prompt_field()
    seed: int = seed_field(2159232)
    steps: int = steps_field(4)
    guidance_scale: float = guidance_field(0.2, LCM_GUIDANCE)
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
            tiny_components=lambda: {**tiny.tiny_sd15(lcm=True), "scheduler": LCMScheduler(**SD_BETAS)},
            **NO_SAFETY_CHECKER,
        )
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        self.setup(config, device, dtype, InputParams, taesd_id=TAESD_ID, tiny_taesd=tiny.tiny_taesd)
