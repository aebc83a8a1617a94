"""A stand-in model that misbehaves on request, for the fault tests: the echo model (returns its
input after `delay_ms`, which with a short --frame-deadline is a hang), plus a `fault` parameter.
Load it with `--pipeline tests.fault_pipeline`."""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image

from bench import echo_pipeline
from bench.echo_pipeline import MODEL_ID, Info  # noqa: F401  (what a pipeline module declares)
from pipelines import select_field

FAULTS = ["none", "few_images", "wrong_size", "not_an_image", "end_thread"]


class ThreadKiller(BaseException):
    """Not an Exception: what no `except Exception` catches, as if the thread were ending."""


class InputParams(echo_pipeline.InputParams):
    fault: Literal["none", "few_images", "wrong_size", "not_an_image", "end_thread"] = select_field(
        "none", FAULTS, "Fault", hide=True
    )


class Pipeline(echo_pipeline.Pipeline):
    InputParams = InputParams

    def predict_batch(self, batch: list[Any], images: list[Image.Image]) -> list[Any]:
        frames = super().predict_batch(batch, images)
        fault = batch[0].fault
        if fault == "few_images":
            return frames[:-1]
        if fault == "wrong_size":
            return [frame.resize((frame.width // 2, frame.height)) for frame in frames]
        if fault == "not_an_image":
            return ["not an image" for _ in frames]
        if fault == "end_thread":
            raise ThreadKiller()
        return frames
