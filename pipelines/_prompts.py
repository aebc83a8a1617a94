"""Prompt embeddings, computed when the prompt changes rather than every frame: compel weights
("a (red)++ cat") and prompts longer than 77 tokens, SDXL's pooled embeddings included."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PromptEmbeds:
    embeds: torch.Tensor
    negative_embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

class PromptCache:
    """Prompt embeddings keyed by (prompt, negative prompt): the text encoder runs only on a change.

    With compel, prompts take weights ("a (red)++ cat") and may exceed 77 tokens.
    """

    def __init__(self, pipe: Any, *, use_compel: bool, sdxl: bool = False, max_entries: int = 32) -> None:
        self._pipe = pipe
        self._sdxl = sdxl
        self._compel: Any = None
        if use_compel:
            from compel import CompelForSD, CompelForSDXL

            self._compel = CompelForSDXL(pipe) if sdxl else CompelForSD(pipe)
        self._entries: OrderedDict[tuple[str, str], PromptEmbeds] = OrderedDict()
        self._max_entries = max_entries
        self.misses = 0  # how many times the text encoder ran

    def __call__(self, prompt: str, negative_prompt: str = "") -> PromptEmbeds:
        key = (prompt, negative_prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        with torch.inference_mode():
            embeds = self._encode(prompt, negative_prompt)
        self._entries[key] = embeds
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return embeds

    def _encode(self, prompt: str, negative_prompt: str) -> PromptEmbeds:
        dtype = self._pipe.unet.dtype
        if self._compel is not None:
            c = self._compel(prompt, negative_prompt=negative_prompt)
            pooled = c.pooled_embeds.to(dtype) if c.pooled_embeds is not None else None
            negative_pooled = c.negative_pooled_embeds.to(dtype) if c.negative_pooled_embeds is not None else None
            return PromptEmbeds(c.embeds.to(dtype), c.negative_embeds.to(dtype), pooled, negative_pooled)
        device = self._pipe.unet.device
        if self._sdxl:
            embeds, negative, pooled, negative_pooled = self._pipe.encode_prompt(
                prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=negative_prompt,
            )
            return PromptEmbeds(embeds, negative, pooled, negative_pooled)
        embeds, negative = self._pipe.encode_prompt(
            prompt, device, 1, do_classifier_free_guidance=True, negative_prompt=negative_prompt
        )
        return PromptEmbeds(embeds, negative)
