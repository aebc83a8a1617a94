"""SDXL with the LCM-LoRA image-to-image: SDXL base 1.0, latent-consistency/lcm-lora-sdxl fused,
TAESDXL (or the fp16-fix VAE), LCM scheduler."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLImg2ImgPipeline
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

MODEL_ID = "stabilityai/stable-diffusion-xl-base-1.0"
LCM_LORA_ID = "latent-consistency/lcm-lora-sdxl"
TAESD_ID = "madebyollin/taesdxl"
FP16_VAE_ID = "madebyollin/sdxl-vae-fp16-fix"  # SDXL's own VAE overflows in float16

PAGE_CONTENT = """
# Image-to-Image SDXL with LCM-LoRA

[SDXL](https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0) made fast by
[LCM-LoRA](https://huggingface.co/latent-consistency/lcm-lora-sdxl): SDXL's detail in a few steps.
It runs at 768x768 by default for real time; 1024x1024 looks best and costs about twice as much.
Guidance above 1 uses the negative prompt.
"""


class Info(PipelineInfo):
    name: str = "img2img_sdxl_lcm_lora"
    title: str = "Image-to-Image SDXL LCM-LoRA"
    description: str = "Redraws the camera with SDXL and the LCM-LoRA"
    page_content: str = PAGE_CONTENT


class InputParams(ParamsModel):
    prompt: str = prompt_field("a portrait in the style of a renaissance oil painting, soft light, detailed")
    negative_prompt: str = prompt_field("blurry, low quality", "Negative prompt", hide=True)
    seed: int = seed_field(2159232)
    steps: int = range_field(4, 1, 15, 1, "Steps", hide=True)
    guidance_scale: float = range_field(
        1.0, 0.0, 2.0, 0.01, "Guidance scale", hide=True,
        description="LCM-LoRA wants 0 to 2; above 1 the negative prompt is used (a second UNet pass)",
    )
    strength: float = range_field(0.5, 0.1, 1.0, 0.01, "Strength", description="How far the output may stray from the input")
    width: int = size_field(768, "Width", ge=512)
    height: int = size_field(768, "Height", ge=512)


class Pipeline(BatchPipeline):
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = common.build_pipeline(
            StableDiffusionXLImg2ImgPipeline,
            config,
            MODEL_ID,
            dtype,
            tiny_components=lambda: {**tiny.tiny_sdxl(), "scheduler": LCMScheduler(**common.SD_BETAS)},
        )
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        if config.tiny:
            common.fuse_lora(self.pipe, tiny.tiny_lora(self.pipe.unet), "lcm")
        elif config.lcm_lora_id != "none":  # 'none': an SDXL model that is fast already (LCM, Turbo, Lightning)
            common.fuse_lora(self.pipe, config.lcm_lora_id or LCM_LORA_ID, "lcm")
        self.loras = common.Loras(self.pipe, config.loras, fuse=config.fuse_loras)
        self.InputParams = self.loras.params_type(InputParams)
        if config.taesd:
            common.swap_in_taesd(self.pipe, config, TAESD_ID, tiny.tiny_taesdxl)
        elif dtype == torch.float16 and not config.tiny:
            self.pipe.vae = common.load_model(AutoencoderKL, FP16_VAE_ID, dtype)
        common.optimize(self.pipe, config, device, dtype)
        self.prompts = common.PromptCache(self.pipe, use_compel=config.compel, sdxl=True)

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
