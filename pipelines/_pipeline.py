"""The base of the diffusers-backed pipelines: once a module has built `self.pipe`, what they all do."""

from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image

from pipelines._base import BatchPipeline, ModelOptions, ParamsModel
from pipelines._denoise import Control, denoise, images_to_tensor, tensor_to_images
from pipelines._device import optimize
from pipelines._images import crop_to_fill
from pipelines._loading import swap_in_taesd
from pipelines._lora import Loras
from pipelines._prompts import PromptCache
from pipelines._temporal import FeatureBank, StreamMemory


class DiffusersPipeline(BatchPipeline):
    """What every pipeline here shares once its module has built `self.pipe` (a diffusers pipeline
    holding the unet, vae, text encoders and scheduler): the user's LoRAs and their `lora_scale`
    parameter, TAESD, device, dtype and compile, the prompt cache, temporal consistency (for params
    with `temporal_consistency`), and the frame loop: crop each frame to the requested size, denoise
    the batch (image to image, or text to image without frames)."""

    pipe: Any
    bank: FeatureBank | None = None

    def setup(
        self,
        config: ModelOptions,
        device: torch.device,
        dtype: torch.dtype,
        params: type[ParamsModel],
        *,
        taesd_id: str,
        tiny_taesd: Callable[[], Any],
        sdxl: bool = False,
    ) -> None:
        self.loras = Loras(self.pipe, config.loras, fuse=config.fuse_loras)
        self.InputParams = self.loras.params_type(params)
        swap_in_taesd(self.pipe, config, taesd_id, tiny_taesd)
        if "temporal_consistency" in params.model_fields:
            self.bank = FeatureBank(self.pipe.unet)  # before compiling: the processors are part of the graph
        optimize(self.pipe, config, device)
        self.prompts = PromptCache(self.pipe, use_compel=config.compel, sdxl=sdxl)

    def new_memory(self) -> StreamMemory:
        """A video stream's temporal memory, to pass with each of its frames (`predict(..., memory=)`)."""
        return StreamMemory()

    @torch.inference_mode()
    def predict_batch(
        self, batch: list[Any], images: list[Image.Image | None], memories: list[StreamMemory | None] | None = None
    ) -> list[Image.Image]:
        return self.generate(batch, self.frames(batch[0], images), memories=memories)

    def frames(self, shared: Any, images: list[Image.Image | None]) -> list[Image.Image] | None:
        """The input frames cropped to fill the requested size; None for text to image."""
        if images[0] is None:
            return None
        return [crop_to_fill(image, shared.width, shared.height) for image in images]

    def generate(
        self,
        batch: list[Any],
        frames: list[Image.Image] | None,
        control: Control | None = None,
        memories: list[StreamMemory | None] | None = None,
    ) -> list[Image.Image]:
        shared = batch[0]  # a batch shares every parameter but the prompts and the seed
        self.loras.apply(shared)
        temporal = getattr(shared, "temporal_consistency", 0.0)
        if memories is not None:  # a stream starts afresh when what it shows is redrawn another way
            for params, memory in zip(batch, memories):
                signature = (params.prompt, params.negative_prompt, params.seed, params.width, params.height,
                             params.steps, getattr(params, "strength", 1.0), temporal)
                if memory is not None and memory.signature != signature:
                    memory.reset(signature)
        unet = self.pipe.unet
        output = denoise(
            self.pipe,
            None if frames is None else images_to_tensor(frames, unet.device, unet.dtype),
            [self.prompts(params.prompt, params.negative_prompt) for params in batch],
            seeds=[params.seed for params in batch],
            steps=shared.steps,
            strength=getattr(shared, "strength", 1.0),
            guidance_scale=shared.guidance_scale,
            width=shared.width,
            height=shared.height,
            control=control,
            memories=memories,
            temporal=temporal,
            bank=self.bank,
        )
        return tensor_to_images(output)
