"""ControlNet canny image-to-image: LCM Dreamshaper v7 guided by the camera's Canny edges
(lllyasviel/control_v11p_sd15_canny), so the scene keeps its lines however far the style strays."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from diffusers import ControlNetModel, LCMScheduler, StableDiffusionControlNetImg2ImgPipeline
from PIL import Image
from pydantic import model_validator

from pipelines import (
    LCM_GUIDANCE,
    ModelOptions,
    ParamsModel,
    PipelineInfo,
    checkbox_field,
    guidance_field,
    negative_prompt_field,
    prompt_field,
    range_field,
    seed_field,
    size_field,
    steps_field,
    strength_field,
    temporal_field,
)
from pipelines import _tiny as tiny
from pipelines._denoise import Control, placement
from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS, build_pipeline, load_model
from pipelines._pipeline import DiffusersPipeline
from pipelines._temporal import StreamMemory

MODEL_ID = "SimianLuo/LCM_Dreamshaper_v7"
CONTROLNET_ID = "lllyasviel/control_v11p_sd15_canny"
TAESD_ID = "madebyollin/taesd"

PAGE_CONTENT = """
# ControlNet Canny LCM

The camera's edges (OpenCV's Canny) steer [LCM Dreamshaper v7](https://huggingface.co/SimianLuo/LCM_Dreamshaper_v7)
through [ControlNet](https://huggingface.co/lllyasviel/control_v11p_sd15_canny): raise **Strength** to
change more of the picture while the edges keep its shapes. **Debug canny** shows the edge map in a corner.
"""


class Info(PipelineInfo):
    name: str = "controlnet_canny"
    title: str = "ControlNet Canny LCM"
    description: str = "Redraws the camera with LCM Dreamshaper v7, held to its edges by ControlNet"
    page_content: str = PAGE_CONTENT


class InputParams(ParamsModel):
    prompt: str = prompt_field("a futuristic city street at night, neon lights, highly detailed")
    negative_prompt: str = negative_prompt_field()
    seed: int = seed_field(2159232)
    steps: int = steps_field(4)
    guidance_scale: float = guidance_field(0.2, LCM_GUIDANCE)
    strength: float = strength_field()
    temporal_consistency: float = temporal_field()
    controlnet_scale: float = range_field(0.8, 0.0, 2.0, 0.01, "ControlNet scale", description="How strongly the edges hold")
    control_start: float = range_field(0.0, 0.0, 1.0, 0.01, "ControlNet start", hide=True)
    control_end: float = range_field(1.0, 0.0, 1.0, 0.01, "ControlNet end", hide=True)
    canny_low: int = range_field(100, 0, 255, 1, "Canny low threshold", hide=True)
    canny_high: int = range_field(200, 0, 255, 1, "Canny high threshold", hide=True)
    debug_canny: bool = checkbox_field(False, "Debug canny", hide=True)
    width: int = size_field(512, "Width")
    height: int = size_field(512, "Height")

    @model_validator(mode="after")
    def _ordered(self) -> InputParams:
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low ({self.canny_low}) must not exceed canny_high ({self.canny_high})")
        if self.control_start > self.control_end:
            raise ValueError(f"control_start ({self.control_start}) must not exceed control_end ({self.control_end})")
        return self


def canny(image: Image.Image, low: int, high: int) -> np.ndarray:
    """Canny edges of an RGB image (what controlnet-aux's CannyDetector computes): HxW uint8, 0 or 255."""
    return cv2.Canny(np.asarray(image), low, high)


def with_edges_in_corner(output: Image.Image, edges: np.ndarray) -> Image.Image:
    """The edge map at a quarter of the size, in the bottom-right corner."""
    inset = Image.fromarray(edges).convert("RGB").resize((output.width // 4, output.height // 4))
    output.paste(inset, (output.width - inset.width, output.height - inset.height))
    return output


def _tiny_components() -> dict:
    components = tiny.tiny_sd15(lcm=True)
    return {**components, "controlnet": tiny.tiny_controlnet(components["unet"]), "scheduler": LCMScheduler(**SD_BETAS)}


class Pipeline(DiffusersPipeline):
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        controlnet = None if config.tiny else load_model(ControlNetModel, config.controlnet_id or CONTROLNET_ID, dtype)
        self.pipe = build_pipeline(
            StableDiffusionControlNetImg2ImgPipeline,
            config,
            MODEL_ID,
            dtype,
            tiny_components=_tiny_components,
            controlnet=controlnet,
            **NO_SAFETY_CHECKER,
        )
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        self.setup(config, device, dtype, InputParams, taesd_id=TAESD_ID, tiny_taesd=tiny.tiny_taesd)

    @torch.inference_mode()
    def predict_batch(
        self, batch: list[InputParams], images: list[Image.Image], memories: list[StreamMemory | None] | None = None
    ) -> list[Image.Image]:
        shared = batch[0]
        frames = self.frames(shared, images)
        edges = [canny(frame, shared.canny_low, shared.canny_high) for frame in frames]
        device, dtype = placement(self.pipe.unet)
        control_image = torch.from_numpy(np.stack(edges)).to(device)[:, None].expand(-1, 3, -1, -1).to(dtype) / 255
        control = Control(
            self.pipe.controlnet, control_image, shared.controlnet_scale, shared.control_start, shared.control_end
        )
        outputs = self.generate(batch, frames, [control], memories)
        if shared.debug_canny:
            outputs = [with_edges_in_corner(output, edge) for output, edge in zip(outputs, edges)]
        return outputs
