"""Write a pipeline as one original-layout (CompVis / SGM, "civitai") .safetensors checkpoint, so the
loading path for users' single-file checkpoints (`from_single_file`) can be tested on miniature
models.

The inverse of diffusers.loaders.single_file_utils (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint), for UNets
whose blocks all have `layers_per_block` layers. Every diffusers key must find a place: an unknown
key raises instead of being dropped silently.
"""

from __future__ import annotations

import re

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL "text_time" added conditioning
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}

_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}

def _replace_prefix(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    raise ValueError(f"no original-layout name for {rest!r}")

def _unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    if unet.config.time_cond_proj_dim is not None:
        # The original layout has no key for an LCM UNet's time_embedding.cond_proj (diffusers
        # would silently drop it); LCM single files on civitai are LCM-LoRA merges without it.
        raise ValueError("an LCM-distilled UNet (time_cond_proj_dim set) has no single-file layout")
    n = unet.config.layers_per_block
    if not isinstance(n, int):
        raise ValueError("only UNets with the same layers_per_block in every block are supported")
    up_has_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    out = {}
    for key, value in unet.state_dict().items():
        if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            side, block, kind, layer, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            # A down block is n layers + a downsampler (input_blocks.0 is conv_in); an up block is
            # n + 1 layers, its upsampler inside the last. Each layer: .0 resnet, .1 attention.
            if side == "down":
                name, index = "input_blocks", 1 + block * (n + 1) + layer
            else:
                name, index = "output_blocks", block * (n + 1) + layer
            inner = f"0.{_replace_prefix(rest, _UNET_RESNET)}" if kind == "resnets" else f"1.{rest}"
            new = f"{name}.{index}.{inner}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_replace_prefix(m[2], _UNET_RESNET)}"  # resnet, attention, resnet
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            block = int(m[1])
            slot = 2 if up_has_attention[block] else 1  # after the resnet (and the attention, if any)
            new = f"output_blocks.{block * (n + 1) + n}.{slot}.conv.{m[2]}"
        else:
            new = _replace_prefix(key, _UNET_FIXED)
        out["model.diffusion_model." + new] = value
    return out

_VAE_FIXED = {
    "conv_norm_out.": "norm_out.",
    "conv_in.": "conv_in.",
    "conv_out.": "conv_out.",
}

_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}

def _vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    num_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            new = key
        else:
            part, rest = key.split(".", 1)  # encoder / decoder
            if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(.+)", rest):
                rest = f"down.{m[1]}.block.{m[2]}"
            elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
                rest = f"down.{m[1]}.downsample.{m[2]}"
            elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(.+)", rest):
                rest = f"up.{num_up - 1 - int(m[1])}.block.{m[2]}"  # the original numbers them bottom-up
            elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
                rest = f"up.{num_up - 1 - int(m[1])}.upsample.{m[2]}"
            elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
                rest = f"mid.block_{int(m[1]) + 1}.{m[2]}"
            elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
                rest = f"mid.attn_1.{_replace_prefix(m[1], _VAE_ATTENTION)}"
                if value.dim() == 2:  # the original attention uses 1x1 convs
                    value = value[:, :, None, None]
            else:
                rest = _replace_prefix(rest, _VAE_FIXED)
            new = f"{part}.{rest}".replace(".conv_shortcut.", ".nin_shortcut.")
        out["first_stage_model." + new] = value
    return out

def _clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (SD1.x, SDXL's first encoder): transformers' own names under a prefix."""
    # transformers >= 5.6 dropped the "text_model." level of CLIPTextModel; the files keep it.
    state = text_encoder.state_dict()
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in state.items()}

_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}

_OPEN_CLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}

def _open_clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP layout (SD2.x, SDXL's second encoder): fused q/k/v, transposed text projection."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key in _OPEN_CLIP_FIXED:
            out[prefix + _OPEN_CLIP_FIXED[key]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            layer, kind = m[1], m[2]
            qkv = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[prefix + f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv)
        elif re.fullmatch(r"encoder\.layers\.\d+\.self_attn\.[kv]_proj\.(weight|bias)", key):
            continue  # fused into in_proj with q above
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            out[prefix + f"transformer.resblocks.{m[1]}.{_replace_prefix(m[2], _OPEN_CLIP_LAYER)}"] = value
        else:
            raise ValueError(f"no original-layout name for text encoder key {key!r}")
    return out

def save_single_file(pipe, path: str) -> None:
    """Write `pipe`'s unet, vae and text encoder(s) as one original-layout .safetensors checkpoint.

    SD1.x: cond_stage_model.transformer.* (OpenAI CLIP); SD2.x: cond_stage_model.model.* (OpenCLIP,
    chosen when the encoder's hidden_act is "gelu"); SDXL (a pipeline with text_encoder_2):
    conditioner.embedders.0.transformer.* and conditioner.embedders.1.model.*. Load it back with
    `<PipelineClass>.from_single_file(path, config=<folder with the pipeline's configs>)`.
    """
    from safetensors.torch import save_file

    state = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update(_clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(_open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    elif pipe.text_encoder.config.hidden_act == "gelu":
        state.update(_open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model."))
    else:
        state.update(_clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    save_file({k: v.detach().contiguous() for k, v in state.items()}, path)
