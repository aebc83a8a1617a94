"""Full-size Stable Diffusion components with random weights, built in code (no download).

The architectures (configs) are those of the models the pipelines load, written out here: compute
cost depends on the shapes, not on the weights' values, so these measure the real per-frame cost
on any machine, hub or not. Builders return the same dicts as `pipelines._tiny` (unet, vae,
text_encoder, tokenizer), so the two are interchangeable in the benchmarks.

| builder | stands in for |
|---|---|
| `sd15_unet(lcm=True)` | SimianLuo/LCM_Dreamshaper_v7 `unet` (SD1.5 UNet, LCM guidance embedding: time_cond_proj_dim 256) |
| `sd21_unet()` | stabilityai/sd-turbo `unet` (SD2.1 UNet: 1024-wide cross attention, heads [5, 10, 20, 20], linear projections) |
| `clip_vit_l()` | openai/clip-vit-large-patch14 text model (SD1.5's `text_encoder`) |
| `open_clip_vit_h()` | OpenCLIP ViT-H/14 text model as SD2.x ships it (23 of its 24 layers: the penultimate is used) |
| `controlnet(unet)` | lllyasviel/control_v11p_sd15_canny (`ControlNetModel.from_unet` of the SD1.5 UNet) |
| `autoencoder_kl()` | the SD1.x/2.x VAE (`vae` of both models above) |
| `taesd()` | madebyollin/taesd (`AutoencoderTiny`'s default config is TAESD's) |
| `sdxl_unet()` | stabilityai/stable-diffusion-xl-base-1.0 `unet` (2.6B parameters, "text_time" conditioning) |
| `open_clip_vit_bigg()` | SDXL's `text_encoder_2` (OpenCLIP ViT-bigG/14, with its projection) |
| `autoencoder_kl_sdxl()` | SDXL's `vae` (the SD VAE's architecture, SDXL's scaling factor) |
| `taesdxl()` | madebyollin/taesdxl (the same architecture as TAESD) |
| `lora(unet)` | a LoRA on the UNet's attention projections (stands in for an accelerator's LoRA: LCM-LoRA, Hyper-SD, PCM, Flash, VegaRT; fused) |
| `sd15(lcm=False)` | stable-diffusion-v1-5 and its fine-tunes (the set-ups' SD 1.5 base: no guidance embedding) |
| `depth_anything_small()` | LiheYoung/depth-anything-small-hf (Dinov2-small backbone: hidden 384, 12 layers, 6 heads, patch 14, 518x518) |
| `dpt_swinv2_base_384()` | Intel/dpt-swinv2-base-384 (Swinv2-base backbone: embed_dim 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32), window 24, 384x384) |
| `image_encoder(source)` | an IP-Adapter's image encoder (`CLIPVisionModelWithProjection`): h94/IP-Adapter's `models/image_encoder` (OpenCLIP ViT-H/14), `sdxl_models/image_encoder` (ViT-bigG/14) |

The model set-ups (pipelines/_setups.py) are built from these too: every ControlNet of a family is
`controlnet(unet)` of that family's UNet (the SD 1.5 canny, depth, lineart and QR-monster ControlNets,
thibaud's SD 2.1 ones, and the SDXL canny, depth, MistoLine and QR-monster ones are each a full copy of
their UNet's encoder); `depth_model(model_id)` picks a depth annotator as
`pipelines._annotators.tiny_depth_model` does (DPT when the id says "dpt", else Depth Anything).

What could not be checked here, with no hub: the depth models' configs are those of transformers'
own conversion script for DPT-SwinV2 (`get_dpt_config("dpt-swinv2-base-384")`: the Swinv2 numbers
above, pretrained windows (12, 12, 12, 6), neck 128/256/512/1024, DPTConfig's other defaults) and of
`DepthAnythingConfig()`'s defaults, which are the small model's; the hub's config.json files were not
read. Two bases have no builder of their own and are built as their family's full model, which costs
more than they do: SDXS-512 (a pruned SD 2.1 UNet with its own tiny autoencoder: `sd21()` with `taesd()`
as its VAE) and Segmind Vega (a distilled SDXL UNet of about 0.75B parameters against 2.6B: `sdxl()`).
MistoLine is taken to be a full SDXL ControlNet, as its file size says. The image encoders' configs
are those of OpenCLIP's ViT-H/14 and ViT-bigG/14 vision towers (the text towers' numbers above are the
same models'); their config.json files were not read either.

`built_on(device)` builds on that device (no copy from the CPU: on a GPU host the random
initialisation of the SDXL UNet takes a moment instead of many seconds).

The tokenizer is `pipelines._tiny.tiny_tokenizer()` (byte-level, one token per character): the real
CLIP vocabulary is not on this machine. Token ids only index the embedding table, and every
encoder output is padded to 77 tokens as with the real tokenizer as long as the prompt fits in 75
characters: the benchmarks use such a prompt, so the UNet sees 77-token embeddings as in production.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipelines import _tiny as tiny

SEED = 0

SD15_UNET = {
    "sample_size": 64,  # only the default image size (x8); the benchmarks pass the size they run at
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SD21_UNET = {
    **SD15_UNET,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}

SDXL_UNET = {
    **{key: SD15_UNET[key] for key in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups", "norm_eps",
                                       "act_fn", "flip_sin_to_cos", "freq_shift", "downsample_padding",
                                       "mid_block_scale_factor")},
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,  # CLIP ViT-L's 768 and OpenCLIP bigG's 1280, concatenated
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 x 256 micro-conditioning + 1280 pooled text embedding
}

SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

CLIP_VIT_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "projection_dim": 768, "hidden_act": "quick_gelu"}
OPEN_CLIP_VIT_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                      "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}
OPEN_CLIP_VIT_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
                   "projection_dim": 512, "hidden_act": "gelu"}


def _ready(model: Any) -> Any:
    return model.float().eval()


def _seeded(seed: int):
    return tiny._seeded(seed)  # the same RNG fencing as the miniature builders


def sd15_unet(lcm: bool = True, seed: int = SEED) -> UNet2DConditionModel:
    with _seeded(seed):
        return _ready(UNet2DConditionModel(**SD15_UNET, time_cond_proj_dim=256 if lcm else None))


def sd21_unet(seed: int = SEED) -> UNet2DConditionModel:
    with _seeded(seed):
        return _ready(UNet2DConditionModel(**SD21_UNET))


def _text_encoder(spec: dict[str, Any], seed: int, cls: type = CLIPTextModel) -> Any:
    tokenizer = tiny.tiny_tokenizer()
    config = CLIPTextConfig(
        vocab_size=49408,  # the real table; the byte-level tokenizer's ids (< 514) index its start
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )
    with _seeded(seed):
        return _ready(cls(config))


def clip_vit_l(seed: int = SEED) -> CLIPTextModel:
    return _text_encoder(CLIP_VIT_L, seed)


def open_clip_vit_h(seed: int = SEED) -> CLIPTextModel:
    return _text_encoder(OPEN_CLIP_VIT_H, seed)


def sdxl_unet(seed: int = SEED) -> UNet2DConditionModel:
    with _seeded(seed):
        return _ready(UNet2DConditionModel(**SDXL_UNET))


def open_clip_vit_bigg(seed: int = SEED) -> CLIPTextModelWithProjection:
    return _text_encoder(OPEN_CLIP_VIT_BIGG, seed, CLIPTextModelWithProjection)


def autoencoder_kl_sdxl(seed: int = SEED) -> AutoencoderKL:
    with _seeded(seed):
        return _ready(AutoencoderKL(**{**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}))


def taesdxl(seed: int = SEED) -> AutoencoderTiny:
    return taesd(seed + 1)


def autoencoder_kl(seed: int = SEED) -> AutoencoderKL:
    with _seeded(seed):
        return _ready(AutoencoderKL(**SD_VAE))


def taesd(seed: int = SEED) -> AutoencoderTiny:
    with _seeded(seed):
        return _ready(AutoencoderTiny())


def controlnet(unet: UNet2DConditionModel, seed: int = SEED) -> ControlNetModel:
    # No weight copy: from_unet's copies fail on an LCM UNet (its time embedding has a cond_proj that
    # a ControlNet lacks, as the real canny ControlNet does). Random weights cost the same.
    with _seeded(seed):
        return _ready(ControlNetModel.from_unet(unet, load_weights_from_unet=False))


def sd15(lcm: bool = True, seed: int = SEED) -> dict[str, Any]:
    """Full-size LCM_Dreamshaper_v7-shaped components, as `pipelines._tiny.tiny_sd15` returns them."""
    return {"unet": sd15_unet(lcm, seed), "vae": autoencoder_kl(seed), "text_encoder": clip_vit_l(seed),
            "tokenizer": tiny.tiny_tokenizer()}


def sd21(seed: int = SEED) -> dict[str, Any]:
    """Full-size sd-turbo-shaped components, as `pipelines._tiny.tiny_sd21` returns them."""
    return {"unet": sd21_unet(seed), "vae": autoencoder_kl(seed), "text_encoder": open_clip_vit_h(seed),
            "tokenizer": tiny.tiny_tokenizer()}


def sdxl(seed: int = SEED) -> dict[str, Any]:
    """Full-size SDXL base 1.0-shaped components, as `pipelines._tiny.tiny_sdxl` returns them."""
    return {"unet": sdxl_unet(seed), "vae": autoencoder_kl_sdxl(seed), "text_encoder": clip_vit_l(seed),
            "text_encoder_2": open_clip_vit_bigg(seed), "tokenizer": tiny.tiny_tokenizer(),
            "tokenizer_2": tiny.tiny_tokenizer()}


# The vision towers of OpenCLIP ViT-H/14 and ViT-bigG/14, as h94/IP-Adapter ships them (CLIPVisionModelWithProjection).
CLIP_VISION_VIT_H = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                     "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 1024,
                     "hidden_act": "gelu"}
CLIP_VISION_VIT_BIGG = {"hidden_size": 1664, "intermediate_size": 8192, "num_hidden_layers": 48,
                        "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 1280,
                        "hidden_act": "gelu"}


def image_encoder(source: str, seed: int = SEED) -> tuple[Any, Any]:
    """(CLIPVisionModelWithProjection, CLIPImageProcessor) as `pipelines._tiny.tiny_image_encoder` returns them,
    at full size: ViT-bigG/14 for h94/IP-Adapter's `sdxl_models/image_encoder`, else ViT-H/14 (`models/image_encoder`).
    The processor is CLIPImageProcessor's defaults (224x224), the encoders' own."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    spec = CLIP_VISION_VIT_BIGG if "sdxl_models" in source else CLIP_VISION_VIT_H
    with _seeded(seed):
        encoder = _ready(CLIPVisionModelWithProjection(CLIPVisionConfig(**spec)))
    return encoder, CLIPImageProcessor()


# transformers' conversion script for Intel's DPT-SwinV2 checkpoints (`get_dpt_config`), base at 384.
SWINV2_BASE_384 = {"image_size": 384, "embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32),
                   "window_size": 24, "pretrained_window_sizes": (12, 12, 12, 6),
                   "out_features": ["stage1", "stage2", "stage3", "stage4"]}
DPT_SWINV2_BASE_NECK = (128, 256, 512, 1024)  # the channels of the four Swinv2 stages: embed_dim * 2**i
# Depth Anything small: a Dinov2-small backbone (DepthAnythingConfig's defaults are this model's).
DINOV2_SMALL = {"image_size": 518, "patch_size": 14, "hidden_size": 384, "num_hidden_layers": 12,
                "num_attention_heads": 6, "mlp_ratio": 4, "out_indices": [9, 10, 11, 12],
                "reshape_hidden_states": False}
DEPTH_ANYTHING_SMALL = {"reassemble_hidden_size": 384, "neck_hidden_sizes": (48, 96, 192, 384),
                        "fusion_hidden_size": 64, "head_hidden_size": 32, "patch_size": 14}


def depth_anything_small(seed: int = SEED) -> Any:
    from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, Dinov2Config

    config = DepthAnythingConfig(backbone_config=Dinov2Config(**DINOV2_SMALL), **DEPTH_ANYTHING_SMALL)
    with _seeded(seed):
        return AutoModelForDepthEstimation.from_config(config).float().eval()


def dpt_swinv2_base_384(seed: int = SEED) -> Any:
    from transformers import AutoModelForDepthEstimation, DPTConfig, Swinv2Config

    config = DPTConfig(backbone_config=Swinv2Config(**SWINV2_BASE_384), neck_hidden_sizes=DPT_SWINV2_BASE_NECK)
    with _seeded(seed):
        return AutoModelForDepthEstimation.from_config(config).float().eval()


def depth_model(model_id: str, seed: int = SEED) -> Any:
    """The full-size depth annotator `model_id` names, by the rule of `pipelines._annotators.tiny_depth_model`."""
    return dpt_swinv2_base_384(seed) if "dpt" in model_id.lower() else depth_anything_small(seed)


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lora(unet: torch.nn.Module, seed: int = SEED, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random LoRA on `unet`'s attention projections, as the state dict `load_lora_weights` takes (the
    keys `pipelines._tiny.tiny_lora` gives), made directly: tiny_lora builds a second UNet to hold the
    adapter, which for SDXL's would be 2.6B parameters more. Small values: fused into random weights, it
    should not push float16 activations out of range."""
    state: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            down = torch.randn(rank, module.in_features, generator=generator, device="cpu") * 0.01
            up = torch.randn(module.out_features, rank, generator=generator, device="cpu") * 0.01
            weight = module.weight  # a LoRA file comes in the model's dtype, and is loaded where the model is
            state[f"unet.{name}.lora_A.weight"] = down.to(device=weight.device, dtype=weight.dtype)
            state[f"unet.{name}.lora_B.weight"] = up.to(device=weight.device, dtype=weight.dtype)
    return state


@contextlib.contextmanager
def built_on(device: Any) -> Iterator[None]:
    """Modules constructed in the block get their parameters on `device` (torch's default-device
    context) rather than on the CPU: the same random weights' cost, without a CPU initialisation of
    billions of parameters and the copy. On the CPU, nothing changes."""
    device = torch.device(device)
    if device.type == "cpu":
        yield
        return
    with device:
        yield


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
