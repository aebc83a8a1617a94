"""LCM image-to-image: SimianLuo/LCM_Dreamshaper_v7, 2 to 4 UNet calls a frame."""

from __future__ import annotations

import torch
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline
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
    negative_prompt: str = prompt_field("", "Negative prompt", hide=True)
    seed: int = seed_field(2159232)
    steps: int = range_field(4, 1, 15, 1, "Steps", hide=True)
    guidance_scale: float = range_field(
        0.2, 0.0, 2.0, 0.01, "Guidance scale", hide=True,
        description="LCM wants 0 to 2; above 1 the negative prompt is used (a second UNet pass)",
    )
    strength: float = range_field(0.5, 0.1, 1.0, 0.01, "Strength", description="How far the output may stray from the input")
    width: int = size_field(512, "Width")
    height: int = size_field(512, "Height")


class Pipeline(BatchPipeline):
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = common.build_pipeline(
            StableDiffusionImg2ImgPipeline,
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
    def predict_batch(self, batch: list[InputParams], images: list[Image.Image]) -> list[Image.Image]:
        shared = batch[0]  # a batch shares every parameter but the prompts and the seed
        self.loras.apply(shared)
        frames = [common.crop_to_fill(image, shared.width, shared.height) for image in images]
        output = common.denoise(
            self.pipe,
            common.images_to_tensor(frames, self.pipe.unet.device, self.pipe.unet.dtype),
            [self.prompts(params.prompt, params.negative_prompt) for params in batch],
            seeds=[params.seed for params in batch],
            steps=shared.steps,
            strength=shared.strength,
            guidance_scale=shared.guidance_scale,
        )
        return common.tensor_to_images(output)
