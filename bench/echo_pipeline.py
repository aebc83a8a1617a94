"""A stand-in model for measuring and testing the serving path: returns its input frame after a fixed
time, or fails on request. Load it with `--pipeline bench.echo_pipeline`.
"""

from __future__ import annotations

import time

import torch
from PIL import Image, ImageOps

from pipelines.base import ModelOptions, ParamsModel, PipelineInfo, checkbox_field, prompt_field, range_field, size_field
from pipelines.common import crop_to_fill

MODEL_ID = "echo"


class Info(PipelineInfo):
    name: str = "echo"
    title: str = "Echo"
    description: str = "Returns the input frame after a fixed delay: a stand-in model for the serving path"


class InputParams(ParamsModel):
    prompt: str = prompt_field("")
    delay_ms: float = range_field(0.0, 0.0, 5000.0, 1.0, "Model time (ms)")
    invert: bool = checkbox_field(False, "Invert the frame")
    fail: bool = checkbox_field(False, "Fail like a model error", hide=True)
    width: int = size_field(512, "Width")
    height: int = size_field(512, "Height")


class Pipeline:
    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.calls = 0

    def predict(self, params: InputParams, image: Image.Image) -> Image.Image:
        self.calls += 1
        if params.delay_ms:
            time.sleep(params.delay_ms / 1000)
        if params.fail:
            raise RuntimeError("stand-in model failure")
        frame = crop_to_fill(image, params.width, params.height)
        return ImageOps.invert(frame) if params.invert else frame
