"""Temporal consistency: what one video stream's frames carry over to the next, so textures do not
crawl and colours do not pulse while the camera barely moves. Training-free, for every image
pipeline, scaled by the `temporal_consistency` parameter (0: frames are independent, as without it):

- a feature bank (after StreamV2V, arXiv 2405.15757): the UNet's self-attention at each denoising
  step also attends to the keys and values it had at that step on the stream's previous frame, their
  weight in the softmax scaled by `temporal_consistency` (a log-bias on the bank's keys). Layers of
  at most `BANK_MAX_TOKENS` tokens are banked: the largest ones would double the attention's cost;
  one previous frame is kept, so the bank's size is fixed;
- latent feedback: the previous output's latent is blended into the current frame's starting
  latent, less where the camera moved (a motion measure on the encoded inputs), to avoid ghosts;
- fixed noise: each frame's noise comes from the stream's seed, so it is the same every frame.

A `StreamMemory` holds one stream's state; the caller keeps one per stream (the server: one per
session) and passes it with each frame. It starts afresh when the prompt, the size, the seed, the
steps or the strength change. `denoise` (pipelines/_denoise.py) reads and writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

BANK_MAX_TOKENS = 1024  # banked self-attention layers: 32x32 latents and smaller (a 512x512 frame's middle layers)
FEEDBACK = 0.5  # the previous output's share of the starting latent at temporal_consistency 1 on a still scene
MOTION_SCALE = 0.35  # relative change of the encoded input at which latent feedback fades out entirely


@dataclass
class StreamMemory:
    """One video stream's temporal state (see the module docstring). Bounded: one frame's latents and
    one frame's banked keys and values, whatever the number of frames."""

    signature: tuple[Any, ...] | None = None
    input_latent: torch.Tensor | None = None  # the last frame's encoded input, 1 x C x h x w
    output_latent: torch.Tensor | None = None  # the last frame's denoised latent
    bank: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (step, layer) -> K, V

    def reset(self, signature: tuple[Any, ...]) -> None:
        self.signature = signature
        self.input_latent = self.output_latent = None
        self.bank = {}

    def nbytes(self) -> int:
        tensors = [self.input_latent, self.output_latent, *(t for kv in self.bank.values() for t in kv)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def blend_previous_output(
    latents: torch.Tensor, memories: list[StreamMemory | None], strength: float
) -> torch.Tensor:
    """The encoded frames with each stream's previous output latent blended in (latent feedback); the
    memories remember these frames' encoded inputs. `strength` is temporal_consistency."""
    blended = []
    for row, memory in enumerate(memories):
        latent = latents[row : row + 1]
        if memory is not None and memory.output_latent is not None and memory.input_latent is not None:
            motion = (latent - memory.input_latent).abs().mean() / (memory.input_latent.abs().mean() + 1e-6)
            share = FEEDBACK * strength * max(0.0, 1.0 - float(motion) / MOTION_SCALE)
            latent = torch.lerp(latent, memory.output_latent, share)
        if memory is not None:
            memory.input_latent = latents[row : row + 1].detach()
        blended.append(latent)
    return torch.cat(blended)


class FeatureBank:
    """The self-attention processors of a UNet's banked layers, and what they read and write while one
    batch is denoised. Inactive (the default), every layer runs diffusers' own processor unchanged."""

    def __init__(self, unet: Any) -> None:
        self.memories: list[StreamMemory | None] = []
        self.rows_per_frame = 1  # 2 with classifier-free guidance: each frame's rows are [negative, positive]
        self.step = 0
        self.log_weight = 0.0
        processors = {}
        for name, processor in unet.attn_processors.items():
            processors[name] = BankedSelfAttention(self, name, processor) if name.endswith("attn1.processor") else processor
        unet.set_attn_processor(processors)

    @property
    def active(self) -> bool:
        return bool(self.memories)

    def start(self, memories: list[StreamMemory | None], rows_per_frame: int, strength: float) -> None:
        self.memories = memories if strength > 0 and any(m is not None for m in memories) else []
        self.rows_per_frame = rows_per_frame
        self.log_weight = math.log(strength) if strength > 0 else 0.0

    def stop(self) -> None:
        self.memories = []


class BankedSelfAttention:
    """diffusers' scaled-dot-product self-attention, whose keys and values also hold the stream's
    previous frame's at this layer and step (in a banked layer, while the bank is active)."""

    def __init__(self, bank: FeatureBank, name: str, plain: Any) -> None:
        self.bank = bank
        self.name = name
        self.plain = plain  # diffusers' processor: what runs when the bank is not in use

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        if (
            not self.bank.active
            or encoder_hidden_states is not None
            or attention_mask is not None
            or hidden_states.ndim != 3
            or hidden_states.shape[1] > BANK_MAX_TOKENS
            or attn.group_norm is not None
            or attn.spatial_norm is not None
        ):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        batch, tokens, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        out = torch.empty_like(query)
        per_frame = self.bank.rows_per_frame
        frames = batch // per_frame
        # Each frame's rows are [negative, positive] with guidance: row = half * frames + frame.
        for frame, memory in enumerate(self.bank.memories[:frames]):
            rows = [half * frames + frame for half in range(per_frame)]
            q, k, v = query[rows], key[rows], value[rows]
            stored = memory.bank.get((self.bank.step, self.name)) if memory is not None else None
            if memory is not None:
                memory.bank[(self.bank.step, self.name)] = (k.detach(), v.detach())
            bias = None
            if stored is not None and stored[0].shape == k.shape:
                k, v = torch.cat([k, stored[0]], dim=1), torch.cat([v, stored[1]], dim=1)
                bias = torch.zeros(1, 1, 1, k.shape[1], dtype=q.dtype, device=q.device)
                bias[..., tokens:] = self.bank.log_weight
            out[rows] = _attention(q, k, v, bias, heads, head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, heads: int,
               head_dim: int) -> torch.Tensor:
    rows = q.shape[0]
    q, k, v = (t.view(rows, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).reshape(rows, -1, heads * head_dim).to(q.dtype)
