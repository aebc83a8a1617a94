"""--safety-checker: Stable Diffusion's safety checker, run after any pipeline."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pipelines._base import ModelOptions
from pipelines._loading import cast, load_model

SAFETY_CHECKER_ID = "CompVis/stable-diffusion-safety-checker"

class SafetyChecker:
    """Stable Diffusion's safety checker: a frame it flags comes out black."""

    def __init__(self, options: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        from pipelines import _tiny as tiny

        if options.tiny:
            model, self.processor = tiny.tiny_safety_checker()
            self.model = cast(model, dtype)
        else:
            self.model = load_model(StableDiffusionSafetyChecker, SAFETY_CHECKER_ID, dtype)
            self.processor = CLIPImageProcessor.from_pretrained(SAFETY_CHECKER_ID)
        self.model.to(device)

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> Image.Image:
        pixels = self.processor(images=image, return_tensors="pt").pixel_values
        clip_input = pixels.to(device=self.model.device, dtype=self.model.dtype)
        _, flagged = self.model(images=[np.zeros(1)], clip_input=clip_input)
        return Image.new("RGB", image.size) if flagged[0] else image
