"""LCM text-to-image: SimianLuo/LCM_Dreamshaper_v7 from the prompt alone (no camera). The server
generates only when the parameters change."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from PIL import Image

from pipelines import common, tiny
from pipelines.base import (
    BatchPipeline,
    ModelOptions,
    ParamsModel,
    PipelineInfo,
    prompt_field,
    range_field,
    seed_field,
    size_field,
)

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
    negative_prompt: str = prompt_field("", "Negative prompt", hide=True)
    seed: int = seed_field(2159232)
    steps: int = range_field(4, 1, 15, 1, "Steps", hide=True)
    guidance_scale: float = range_field(0.2, 0.0, 2.0, 0.01, "Guidance scale", hide=True)
    width: int = size_field(512, "Width")
    height: int = size_field(512, "Height")


class Pipeline(BatchPipeline):
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = common.build_pipeline(
            StableDiffusionPipeline,
            config,
            MODEL_ID,
            dtype,
            tiny_components=lambda: {**tiny.tiny_sd15(lcm=True), "scheduler": LCMScheduler(**common.SD_BETAS)},
            **common.NO_SAFETY_CHECKER,
        )
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        self.loras = common.Loras(self.pipe, config.loras, fuse=config.fuse_loras)
        self.InputParams = self.loras.params_type(InputParams)
        common.swap_in_taesd(self.pipe, config, TAESD_ID, tiny.tiny_taesd)
        common.optimize(self.pipe, config, device, dtype)
        self.prompts = common.PromptCache(self.pipe, use_compel=config.compel)

    @torch.inference_mode()
    def predict_batch(self, batch: list[InputParams], images: list[None]) -> list[Image.Image]:
        shared = batch[0]  # a batch shares every parameter but the prompts and the seed
        self.loras.apply(shared)
        output = common.denoise(
            self.pipe,
            None,
            [self.prompts(params.prompt, params.negative_prompt) for params in batch],
            seeds=[params.seed for params in batch],
            steps=shared.steps,
            strength=1.0,
            guidance_scale=shared.guidance_scale,
            width=shared.width,
            height=shared.height,
        )
        return common.tensor_to_images(output)
