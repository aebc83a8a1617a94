"""Temporal consistency: what one video stream's frames carry over to the next, so textures do not
crawl and colours do not pulse while the camera barely moves. Training-free, for every image
pipeline, scaled by the `temporal_consistency` parameter (0: frames are independent, as without it):

- a feature bank (after StreamV2V, arXiv 2405.15757): the UNet's self-attention at each denoising
  step also attends to the keys and values it had at that step on the stream's previous frame, their
  weight in the softmax scaled by `temporal_consistency` (a log-bias on the bank's keys) and lowered
  per key where that part of the picture moved (see below). Layers of at most `BANK_MAX_TOKENS`
  tokens are banked: the largest ones would double the attention's cost; one previous frame is kept,
  so the bank's size is fixed;
- latent feedback: the previous output's latent is blended into the current frame's starting
  latent, less where the picture moved;
- fixed noise: each frame's noise comes from the stream's seed, so it is the same every frame.

Motion is a map, not one number per frame (`motion`): the per-latent-pixel change of the encoded
input since the last frame, relative to the last encoding's mean magnitude, lightly blurred; its
median over the frame is the frame's floor (sensor noise, a pan), and where a region changed by more
than twice the floor it counts as moved (0 to 1 at `MOTION_SCALE` more), widened so the edges of a
moving object are covered. The floor and the moved map fade the latent feedback (`feedback_share`);
the moved map alone masks the bank's keys (`bank_weight`): the bank is matched by content, so noise
and a pan keep it. A subject moving over a still background thus gets no feedback and no banked keys
where it is and was, while the background keeps both. When the encoding hardly correlates with the
last one (`SCENE_CUT_SIMILARITY`: a cut, or the page switched from the camera to the screen), the
stream's memory is dropped before it is used: that frame is exactly what a fresh stream would draw.

A `StreamMemory` holds one stream's state; the caller keeps one per stream (the server: one per
session) and passes it with each frame. It starts afresh when the prompt, the size, the seed, the
steps or the strength change, on a scene cut, and when the caller says so (`StreamMemory.reset()`,
e.g. the client switched its source). Its size is known before the first frame
(`DiffusersPipeline.memory_bytes`) and can be capped per stream (`StreamMemory.max_bytes`: fewer
layers banked). `denoise` (pipelines/_denoise.py) reads and writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

BANK_MAX_TOKENS = 1024  # banked self-attention layers: 32x32 latents and smaller (a 512x512 frame's middle layers)
FEEDBACK = 0.5  # the previous output's share of the starting latent at temporal_consistency 1 on a still scene
# Relative change of the encoded input at which the feedback fades out (the frame's floor, or a region's
# excess over twice the floor) and a region's banked keys are masked.
MOTION_SCALE = 0.35
SCENE_CUT_SIMILARITY = 0.5  # an encoding correlating less than this with the last one: a new scene, memory dropped
MIN_BANK_WEIGHT = 1e-4  # a moved region's banked keys: their softmax weight (log-bias about -9.2: masked out in effect)


@dataclass
class StreamMemory:
    """One video stream's temporal state (see the module docstring). Bounded: one frame's latents and
    one frame's banked keys and values, whatever the number of frames; at most `max_bytes` when set.

    `max_bytes` (None: no cap) caps what the stream holds: the pipeline banks only the cheapest layers
    that fit (`DiffusersPipeline.memory_plan`); the two latents are always kept. It may be changed
    between frames: the next frame drops what no longer fits. `scene_cuts` counts the times the
    pipeline found a new scene and started afresh."""

    signature: tuple[Any, ...] | None = None
    input_latent: torch.Tensor | None = None  # the last frame's encoded input, 1 x C x h x w
    output_latent: torch.Tensor | None = None  # the last frame's denoised latent
    bank: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (step, layer) -> K, V
    max_bytes: int | None = None
    layers: frozenset[str] | None = None  # the layers banked for this stream (None: every bankable one); set per frame
    scene_cuts: int = 0

    def reset(self, signature: tuple[Any, ...] | None = None) -> None:
        """Forget the stream: its next frame is drawn as a fresh stream's first. The server calls
        `memory.reset()` when the client says its source changed (camera to screen, say), before the
        stream's next frame goes to the pipeline; a frame being generated meanwhile cannot leak into
        the next one (the signature is cleared last, so the next frame starts afresh whatever it
        finds). The pipeline passes the new `signature` when the parameters change."""
        self.forget()
        self.signature = signature

    def forget(self) -> None:
        """Drop the frames' state (latents and bank), keep the signature and the cap."""
        self.input_latent = self.output_latent = None
        self.bank = {}

    def nbytes(self) -> int:
        tensors = [self.input_latent, self.output_latent, *(t for kv in self.bank.values() for t in kv)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# --- motion gating --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Motion:
    """How one frame's encoded input differs from its stream's previous one (`motion`), relative to the
    previous encoding's mean magnitude. `floor`: the frame's typical change, the median over its
    latent pixels (sensor noise; a pan moves every pixel alike). `moved`: 1 x 1 x h x w in [0, 1], where
    a region changed beyond twice that floor (0: no more than the rest; 1: by MOTION_SCALE more), so a
    subject moving over a still background stands out of the noise."""

    floor: torch.Tensor  # 0-dim, float32
    moved: torch.Tensor  # 1 x 1 x h x w, float32


def relative_change(latent: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """1 x 1 x h x w: each latent pixel's absolute change since the previous encoded input, averaged
    over the channels and over 3x3 pixels, relative to the previous encoding's mean magnitude."""
    change = (latent.float() - previous.float()).abs().mean(dim=1, keepdim=True)
    change = F.avg_pool2d(change, 3, stride=1, padding=1, count_include_pad=False)
    return change / (previous.float().abs().mean() + 1e-6)


def motion(latent: torch.Tensor, previous: torch.Tensor) -> Motion:
    """The frame's motion (see `Motion`); `moved` is widened by a 3x3 max so that a moving object's
    edges are covered."""
    change = relative_change(latent, previous)
    floor = change.median()
    widened = F.max_pool2d(change, 3, stride=1, padding=1)
    return Motion(floor, ((widened - 2 * floor).clamp(min=0.0) / MOTION_SCALE).clamp(max=1.0))


def scene_similarity(latent: torch.Tensor, previous: torch.Tensor) -> float:
    """The correlation of two encoded frames (each channel's mean taken out): about 1 for the same
    scene, however noisy, lit or moved a little; near 0 for unrelated pictures."""
    a = latent.float() - latent.float().mean(dim=(-2, -1), keepdim=True)
    b = previous.float() - previous.float().mean(dim=(-2, -1), keepdim=True)
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-6))


def is_scene_cut(latent: torch.Tensor, previous: torch.Tensor) -> bool:
    """The picture changed as a whole (a cut, another source): its encoding correlates with the
    previous one below SCENE_CUT_SIMILARITY."""
    return scene_similarity(latent, previous) < SCENE_CUT_SIMILARITY


def feedback_share(motion: Motion, strength: float) -> torch.Tensor:
    """1 x 1 x h x w: the previous output latent's share of each pixel of the starting latent: FEEDBACK
    x `strength` on a still picture, fading out as the frame's floor (noise, a pan) plus the region's
    own motion reach MOTION_SCALE."""
    return FEEDBACK * strength * (1.0 - (motion.floor / MOTION_SCALE + motion.moved).clamp(max=1.0))


def bank_weight(motion: Motion, size: tuple[int, int], strength: float) -> torch.Tensor:
    """h*w (a layer's tokens, row-major): each banked key's weight in the softmax at a layer of `size`
    (h, w): `strength` where the picture under it did not move beyond the frame's floor (the bank is
    matched by content, so noise and a pan keep it), down to MIN_BANK_WEIGHT where a latent pixel under
    it moved (`moved` max-pooled to the layer's resolution)."""
    moved = motion.moved
    if tuple(moved.shape[-2:]) != tuple(size):
        moved = F.adaptive_max_pool2d(moved, size)
    return (strength * (1.0 - moved)).flatten().clamp(min=MIN_BANK_WEIGHT)


def blend_previous_output(
    latents: torch.Tensor, memories: list[StreamMemory | None], strength: float
) -> tuple[torch.Tensor, list[Motion | None]]:
    """The encoded frames with each stream's previous output latent blended in, less where the picture
    moved (latent feedback), and each frame's motion (None: nothing to compare with). A stream whose
    picture changed as a whole (`is_scene_cut`) forgets its memory first, so that frame is a fresh
    stream's. The memories then remember these frames' encoded inputs. `strength` is
    temporal_consistency."""
    blended, motions = [], []
    for row, memory in enumerate(memories):
        latent = latents[row : row + 1]
        moving = None
        if memory is not None and memory.input_latent is not None:
            previous = memory.input_latent
            if previous.shape != latent.shape or is_scene_cut(latent, previous):
                memory.scene_cuts += 1 if previous.shape == latent.shape else 0
                memory.forget()
            else:
                moving = motion(latent, previous)
                if memory.output_latent is not None:
                    share = feedback_share(moving, strength).to(latent.dtype)
                    latent = torch.lerp(latent, memory.output_latent, share)
        if memory is not None:
            memory.input_latent = latents[row : row + 1].detach()
        blended.append(latent)
        motions.append(moving)
    return torch.cat(blended), motions


# --- the feature bank -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BankLayer:
    """A bankable self-attention layer: its processor's name, its resolution level (0: the latent's;
    each downsampling block below adds one) and the features its keys and values hold per token."""

    name: str
    level: int
    kv_features: int
    order: int


@dataclass(frozen=True)
class MemoryPlan:
    """What a stream's memory holds at given parameters (`DiffusersPipeline.memory_plan`): `nbytes` in
    all, of which `latent_bytes` for the two latents; the banked `layers` (processor names) of the
    `bankable` ones at this size; `steps` denoising steps; `rows` per frame (2 with classifier-free
    guidance)."""

    nbytes: int = 0
    latent_bytes: int = 0
    layers: tuple[str, ...] = ()
    bankable: int = 0
    steps: int = 0
    rows: int = 0


def level_sizes(latent_size: tuple[int, int], downsamples: list[bool]) -> list[tuple[int, int]]:
    """(h, w) of the UNet's hidden states at each level (a stride-2 convolution: ceil(n / 2))."""
    sizes = [latent_size]
    for down in downsamples[:-1] if downsamples else []:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2) if down else (h, w))
    return sizes


class FeatureBank:
    """The self-attention processors of a UNet's banked layers, and what they read and write while one
    batch is denoised. Inactive (the default), every layer runs diffusers' own processor unchanged."""

    def __init__(self, unet: Any) -> None:
        self.memories: list[StreamMemory | None] = []
        self.rows_per_frame = 1  # 2 with classifier-free guidance: each frame's rows are [negative, positive]
        self.step = 0
        self.strength = 0.0
        self.motions: list[Motion | None] = []
        self.sizes: dict[int, tuple[int, int]] = {}  # tokens -> (h, w) of the levels of this batch
        self.biases: dict[tuple[int, int], torch.Tensor] = {}  # (frame, tokens) -> this batch's attention bias
        self.downsamples = [bool(getattr(block, "downsamplers", None)) for block in unet.down_blocks]
        self.layers: list[BankLayer] = []
        processors = {}
        for name, processor in unet.attn_processors.items():
            if name.endswith("attn1.processor"):
                processors[name] = BankedSelfAttention(self, name, processor)
                layer = self._layer(unet, name)
                if layer is not None:
                    self.layers.append(layer)
            else:
                processors[name] = processor
        unet.set_attn_processor(processors)

    def _layer(self, unet: Any, name: str) -> BankLayer | None:
        """The layer behind a processor, if the bank can take it (self-attention, no norms of its own)."""
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention or attn.group_norm is not None or attn.spatial_norm is not None:
            return None
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = int(parts[1])
        elif parts[0] == "mid_block":
            level = len(unet.down_blocks) - 1
        elif parts[0] == "up_blocks":
            level = len(unet.up_blocks) - 1 - int(parts[1])
        else:
            return None
        kv = getattr(attn, "inner_kv_dim", None)
        kv_features = 2 * kv if kv else attn.to_k.out_features + attn.to_v.out_features
        return BankLayer(name, level, kv_features, len(self.layers))

    @property
    def active(self) -> bool:
        return bool(self.memories)

    def plan(self, latent_size: tuple[int, int], steps: int, rows: int, element_size: int, channels: int,
             max_bytes: int | None = None) -> MemoryPlan:
        """What a stream holds: the bankable layers at this latent size (at most BANK_MAX_TOKENS
        tokens), each at every step for every row, plus its two latents. Under `max_bytes`, only the
        cheapest layers that fit (fewest bytes first; the latents are always kept)."""
        sizes = level_sizes(latent_size, self.downsamples)
        latent_bytes = 2 * channels * latent_size[0] * latent_size[1] * element_size
        costs = []
        for layer in self.layers:
            h, w = sizes[min(layer.level, len(sizes) - 1)]
            if h * w <= BANK_MAX_TOKENS:
                costs.append((steps * rows * h * w * layer.kv_features * element_size, layer.order, layer.name))
        total, chosen = latent_bytes, []
        for cost, _, name in sorted(costs):
            if max_bytes is not None and total + cost > max_bytes:
                break
            total += cost
            chosen.append(name)
        return MemoryPlan(total, latent_bytes, tuple(chosen), len(costs), steps, rows)

    def start(self, memories: list[StreamMemory | None], rows_per_frame: int, strength: float,
              motions: list[Motion | None] | None = None, latent_size: tuple[int, int] | None = None) -> None:
        self.memories = memories if strength > 0 and any(m is not None for m in memories) else []
        self.rows_per_frame = rows_per_frame
        self.strength = strength
        self.motions = list(motions) if motions is not None else [None] * len(memories)
        self.sizes = {h * w: (h, w) for h, w in level_sizes(latent_size, self.downsamples)} if latent_size else {}
        self.biases = {}

    def stop(self) -> None:
        self.memories = []
        self.motions = []
        self.biases = {}

    def bias(self, frame: int, tokens: int, like: torch.Tensor) -> torch.Tensor:
        """1 x 1 x 1 x 2*tokens: the log-weights of a frame's own keys (0) then of its banked ones, at a
        layer of `tokens` tokens; made once per frame and layer resolution."""
        cached = self.biases.get((frame, tokens))
        if cached is None:
            moving = self.motions[frame] if frame < len(self.motions) else None
            size = self.sizes.get(tokens)
            if moving is None or size is None:
                banked = torch.full((tokens,), math.log(self.strength), device=like.device)
            else:
                banked = bank_weight(moving, size, self.strength).log()
            cached = torch.cat([torch.zeros(tokens, device=like.device), banked.to(like.device)])
            cached = cached.to(like.dtype).view(1, 1, 1, -1)
            self.biases[(frame, tokens)] = cached
        return cached


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
            if memory is not None and memory.layers is not None and self.name not in memory.layers:
                memory = None  # not banked for this stream (its memory cap)
            stored = memory.bank.get((self.bank.step, self.name)) if memory is not None else None
            if memory is not None:
                memory.bank[(self.bank.step, self.name)] = (k.detach(), v.detach())
            bias = None
            if stored is not None and stored[0].shape == k.shape:
                k, v = torch.cat([k, stored[0]], dim=1), torch.cat([v, stored[1]], dim=1)
                bias = self.bank.bias(frame, tokens, q)
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
