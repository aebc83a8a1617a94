"""SDXL with the LCM-LoRA image-to-image: SDXL base 1.0, latent-consistency/lcm-lora-sdxl fused,
TAESDXL (or the fp16-fix VAE), LCM scheduler."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLImg2ImgPipeline

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
from pipelines._loading import SD_BETAS, build_pipeline, load_model
from pipelines._lora import fuse_lora
from pipelines._pipeline import DiffusersPipeline

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
    negative_prompt: str = negative_prompt_field("blurry, low quality")
    seed: int = seed_field(2159232)
    steps: int = steps_field(4)
    guidance_scale: float = guidance_field(1.0)
    strength: float = strength_field()
    temporal_consistency: float = temporal_field()
    width: int = size_field(768, "Width", ge=512)
    height: int = size_field(768, "Height", ge=512)


class Pipeline(DiffusersPipeline):
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = build_pipeline(
            StableDiffusionXLImg2ImgPipeline,
            config,
            MODEL_ID,
            dtype,
            tiny_components=lambda: {**tiny.tiny_sdxl(), "scheduler": LCMScheduler(**SD_BETAS)},
        )
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        if config.tiny:
            fuse_lora(self.pipe, tiny.tiny_lora(self.pipe.unet), "lcm")
        elif config.lcm_lora_id != "none":  # 'none': an SDXL model that is fast already (LCM, Turbo, Lightning)
            fuse_lora(self.pipe, config.lcm_lora_id or LCM_LORA_ID, "lcm")
        if not config.taesd and dtype == torch.float16 and not config.tiny:
            self.pipe.vae = load_model(AutoencoderKL, FP16_VAE_ID, dtype)
        self.setup(config, device, dtype, InputParams, taesd_id=TAESD_ID, tiny_taesd=tiny.tiny_taesdxl, sdxl=True)
