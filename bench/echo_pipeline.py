"""A stand-in model for measuring and testing the serving path: returns its input frame after a fixed
time, or fails on request. Load it with `--pipeline bench.echo_pipeline`.
"""

from __future__ import annotations

import time

import torch
from PIL import Image, ImageOps

from pipelines import (
    BatchPipeline,
    ModelOptions,
    ParamsModel,
    PipelineInfo,
    checkbox_field,
    prompt_field,
    range_field,
    size_field,
)
from pipelines._images import crop_to_fill

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


class Pipeline(BatchPipeline):
    """`delay_ms` is the time of one model call, whatever the batch: a GPU running a small batch
    takes about as long as for one frame."""

    InputParams = InputParams

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.calls = 0

    def predict_batch(self, batch: list[InputParams], images: list[Image.Image]) -> list[Image.Image]:
        self.calls += 1
        shared = batch[0]
        if shared.delay_ms:
            time.sleep(shared.delay_ms / 1000)
        if shared.fail:
            raise RuntimeError("stand-in model failure")
        frames = [crop_to_fill(image, shared.width, shared.height) for image in images]
        return [ImageOps.invert(frame) for frame in frames] if shared.invert else frames
