"""The base of the diffusers-backed pipelines: once a module has built `self.pipe`, what they all do."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from pipelines._base import BatchPipeline, ModelOptions, ParamsModel
from pipelines._denoise import (
    Control,
    denoise,
    images_to_tensor,
    img2img_step_count,
    placement,
    tensor_to_images,
    uses_cfg,
    uses_residual_guidance,
)
from pipelines._device import optimize
from pipelines._images import crop_to_fill
from pipelines._loading import swap_in_taesd
from pipelines._lora import Loras
from pipelines._prompts import PromptCache
from pipelines._temporal import FeatureBank, MemoryPlan, StreamMemory


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

    def new_memory(self, max_bytes: int | None = None) -> StreamMemory:
        """A video stream's temporal memory, to pass with each of its frames (`predict(..., memory=)`);
        it holds at most `max_bytes` (None: what the parameters need, `memory_bytes`). The cap can be
        changed later (`memory.max_bytes = ...`), and `memory.reset()` makes the stream start afresh
        (its source changed)."""
        return StreamMemory(max_bytes=max_bytes)

    def memory_plan(self, params: Any, max_bytes: int | None = None) -> MemoryPlan:
        """What a stream's memory will hold at `params` once it has seen a frame, computed before any
        frame (a pure function of the parameters and the UNet's structure; safe from any thread):
        bytes in all, the latents' share, the banked layers of the bankable ones. Empty (0 bytes) when
        `temporal_consistency` is 0 or missing, or for text to image (nothing is carried over).
        With `max_bytes`, what a memory made with that cap holds (see `memory_bytes`)."""
        temporal = getattr(params, "temporal_consistency", 0.0)
        if self.bank is None or not temporal:
            return MemoryPlan()
        unet = self.pipe.unet
        factor = self.pipe.vae_scale_factor
        latent_size = (-(-params.height // factor), -(-params.width // factor))
        strength = getattr(params, "strength", 1.0)
        guidance = getattr(params, "guidance_scale", 0.0)
        residual = getattr(params, "guidance_mode", "full") != "full" and uses_residual_guidance(
            unet, self.pipe.scheduler, guidance, images=True
        )
        full_cfg = uses_cfg(unet, guidance) and not residual
        return self.bank.plan(
            latent_size,
            steps=img2img_step_count(params.steps, strength),
            rows=2 if full_cfg else 1,
            element_size=torch.empty((), dtype=placement(unet)[1]).element_size(),
            channels=unet.config.in_channels,
            max_bytes=max_bytes,
        )

    def memory_bytes(self, params: Any, max_bytes: int | None = None) -> int:
        """The bytes a stream's memory (`StreamMemory.nbytes()`) will hold at `params` from its first
        frame on, known before any frame is generated: per denoising step run (img2img:
        int(n * strength) of an n-step schedule) the keys and values of every banked self-attention
        layer (at most BANK_MAX_TOKENS tokens at this width and height), for each of the frame's
        UNet rows (2 with classifier-free guidance), plus the two latents; 0 when
        `temporal_consistency` is 0.

        To keep memory within a budget, the server can either refuse or lower:

            needed = pipeline.memory_bytes(params)
            if needed > budget:
                lowered = pipeline.memory_bytes(params, max_bytes=budget)  # cheapest layers that fit
                if lowered > budget:  # not even the latents (latent feedback alone) fit: refuse
                    ...
                else:  # fewer layers banked: what it will hold is `lowered`
                    memory = pipeline.new_memory(max_bytes=budget)  # or memory.max_bytes = budget

        `max_bytes=0` gives the least a stream can hold with temporal consistency on (its two
        latents, no bank). `memory_plan` says which layers are banked."""
        return self.memory_plan(params, max_bytes).nbytes

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
        controls: Sequence[Control] = (),
        memories: list[StreamMemory | None] | None = None,
        eta: float | None = None,
        image_embeds: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
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
            if temporal > 0 and frames is not None:
                self._plan_banks(batch, memories)
        unet = self.pipe.unet
        output = denoise(
            self.pipe,
            None if frames is None else images_to_tensor(frames, *placement(unet)),
            [self.prompts(params.prompt, params.negative_prompt) for params in batch],
            seeds=[params.seed for params in batch],
            steps=shared.steps,
            strength=getattr(shared, "strength", 1.0),
            guidance_scale=shared.guidance_scale,
            width=shared.width,
            height=shared.height,
            controls=controls,
            eta=eta,
            guidance_mode=getattr(shared, "guidance_mode", "full"),
            residual_delta=getattr(shared, "residual_delta", 1.0),
            image_embeds=image_embeds,
            memories=memories,
            temporal=temporal,
            bank=self.bank,
        )
        return tensor_to_images(output)

    def _plan_banks(self, batch: list[Any], memories: list[StreamMemory | None]) -> None:
        """Each capped memory's banked layers for this frame; what it holds beyond them is dropped."""
        for params, memory in zip(batch, memories):
            if memory is None:
                continue
            if memory.max_bytes is None:
                memory.layers = None
                continue
            layers = frozenset(self.memory_plan(params, memory.max_bytes).layers)
            if memory.layers != layers:
                memory.layers = layers
                memory.bank = {key: kv for key, kv in memory.bank.items() if key[1] in layers}
