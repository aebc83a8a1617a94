"""SD-Turbo image-to-image: stabilityai/sd-turbo, one UNet call a frame, no guidance pass."""

from __future__ import annotations

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
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
    negative_prompt: str = prompt_field("", "Negative prompt", hide=True)
    seed: int = seed_field(2159232)
    steps: int = range_field(1, 1, 10, 1, "Steps", hide=True)
    guidance_scale: float = range_field(
        0.0, 0.0, 2.0, 0.01, "Guidance scale", hide=True,
        description="Turbo models are trained without guidance; above 1 costs a second UNet pass",
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
            tiny_components=lambda: {
                **tiny.tiny_sd21(),
                "scheduler": EulerDiscreteScheduler(**common.SD_BETAS, timestep_spacing="trailing"),
            },
            **common.NO_SAFETY_CHECKER,
        )
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
