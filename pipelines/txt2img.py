"""LCM text-to-image: SimianLuo/LCM_Dreamshaper_v7 from the prompt alone (no camera). The server
generates only when the parameters change."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import LCMScheduler, StableDiffusionPipeline

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
)
from pipelines import _tiny as tiny
from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS, build_pipeline
from pipelines._pipeline import DiffusersPipeline

MODEL_ID = "SimianLuo/LCM_Dreamshaper_v7"
TAESD_ID = "madebyollin/taesd"

PAGE_CONTENT = """
# Text-to-Image LCM

Type and watch: [LCM Dreamshaper v7](https://huggingface.co/SimianLuo/LCM_Dreamshaper_v7) draws the
prompt in four steps, again each time a parameter changes. Change the **seed** for another take.
"""


class Info(PipelineInfo):
    name: str = "txt2img"
    title: str = "Text-to-Image LCM"
    description: str = "Draws the prompt with LCM Dreamshaper v7 as you type"
    input_mode: Literal["image", "text"] = "text"
    page_content: str = PAGE_CONTENT


class InputParams(ParamsModel):
    prompt: str = prompt_field("a lighthouse on a cliff at dawn, oil painting, dramatic sky")
    negative_prompt: str = negative_prompt_field()
    seed: int = seed_field(2159232)
    steps: int = steps_field(4)
    guidance_scale: float = guidance_field(0.2, LCM_GUIDANCE)
    width: int = size_field(512, "Width")
    height: int = size_field(512, "Height")


class Pipeline(DiffusersPipeline):
    """Text to image: the inherited frame loop, with no frames."""

    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = build_pipeline(
            StableDiffusionPipeline,
            config,
            MODEL_ID,
            dtype,
            tiny_components=lambda: {**tiny.tiny_sd15(lcm=True), "scheduler": LCMScheduler(**SD_BETAS)},
            **NO_SAFETY_CHECKER,
        )
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        self.setup(config, device, dtype, InputParams, taesd_id=TAESD_ID, tiny_taesd=tiny.tiny_taesd)
