"""Miniature, randomly initialised Stable Diffusion components, built in code.

Tests and CI run on CPU with no Hugging Face hub, so nothing may be downloaded. These builders
make the real diffusers / transformers classes (same architecture family, same config keys as
SD1.5 + LCM, SD2.1 / sd-turbo, SDXL, TAESD, ControlNet) but hundreds of times smaller, so the
real pipelines, compel, LoRA loading, save_pretrained / from_pretrained and from_single_file can
be exercised in milliseconds. Weights are random but deterministic for a given seed.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG for module construction, then restore the caller's RNG state."""
    # Module constructors draw their initial weights from the global RNG; fork_rng keeps the
    # builders deterministic without changing the random stream of the code that calls them.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

def _ready(model):
    return model.float().eval()  # .float(), not .to(): diffusers warns on .to(dtype)

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP table mapping each byte to a printable character (byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))

def tiny_tokenizer() -> CLIPTokenizer:
    """CLIP BPE tokenizer with a byte-level vocabulary and no merges (514 tokens).

    Every character becomes one token (the last of a word in its "</w>" form), so different prompts
    give different ids. The layout is the start of the real CLIP vocabulary: ids 0-255 are the
    bytes, 256-511 their "</w>" forms; <|startoftext|> = 512, <|endoftext|> = 513 (also pad), and
    eos is the highest id, as in the real vocabulary.
    """
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    # transformers 5: pass vocab/merges as objects; CLIPTokenizer(vocab_file=...) ignores files.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="<|endoftext|>")

def _text_config(tokenizer: CLIPTokenizer, hidden_size: int, hidden_act: str, projection_dim: int | None = None):
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=hidden_act,  # "quick_gelu": OpenAI CLIP (SD1.x); "gelu": OpenCLIP (SD2.x, SDXL's 2nd)
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooled output is taken at the first eos token
        pad_token_id=tokenizer.pad_token_id,
    )

def _unet(cross_attention_dim: int, sample_size: int, **extra) -> UNet2DConditionModel:
    # Two blocks instead of four: enough for down/up sampling, cross attention and skip connections.
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        **extra,
    )

def _vae(scaling_factor: float, sample_size: int, **extra) -> AutoencoderKL:
    # Four blocks, so the latent is 8x smaller than the image, as in the real VAEs.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        **extra,
    )

def _taesd() -> AutoencoderTiny:
    # madebyollin/taesd and taesdxl share one architecture: four blocks (scale factor 8), 4 latents.
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    # PyTorch's default conv init shrinks the signal at every layer: the encoder's latents came out
    # near zero and every decoded frame near black, whatever the input. Variance-preserving weights
    # give latents of real-image scale (std ~0.7) and varied mid-range frames that follow the input.
    for part, gain in ((vae.encoder, 1.0), (vae.decoder, 0.85)):
        for conv in part.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                conv.weight.data.mul_(gain)
                if conv.bias is not None:
                    torch.nn.init.zeros_(conv.bias)
    return vae

def tiny_sd15(seed: int = 0, lcm: bool = True) -> dict:
    """SD1.5-shaped components; with lcm=True the UNet is LCM-distilled (like LCM_Dreamshaper_v7)."""
    tokenizer = tiny_tokenizer()
    with _seeded(seed):
        # time_cond_proj_dim: the guidance-scale embedding input of an LCM-distilled UNet (256 in the real one).
        unet = _unet(cross_attention_dim=32, sample_size=64, time_cond_proj_dim=256 if lcm else None)
        vae = _vae(scaling_factor=0.18215, sample_size=512)
        text_encoder = CLIPTextModel(_text_config(tokenizer, 32, "quick_gelu"))
    return {"unet": _ready(unet), "vae": _ready(vae), "text_encoder": _ready(text_encoder), "tokenizer": tokenizer}

def tiny_sd21(seed: int = 0) -> dict:
    """SD2.1 / sd-turbo-shaped components: linear projections in the transformers, OpenCLIP-style text encoder."""
    tokenizer = tiny_tokenizer()
    with _seeded(seed):
        unet = _unet(cross_attention_dim=32, sample_size=64, use_linear_projection=True)
        vae = _vae(scaling_factor=0.18215, sample_size=512)
        text_encoder = CLIPTextModel(_text_config(tokenizer, 32, "gelu"))
    return {"unet": _ready(unet), "vae": _ready(vae), "text_encoder": _ready(text_encoder), "tokenizer": tokenizer}

def tiny_sdxl(seed: int = 0) -> dict:
    """SDXL-shaped components: two text encoders (the 2nd with projection), "text_time" added conditioning.

    The two encoders have different widths (32 and 64, as 768 and 1280 in the real model): diffusers'
    single-file loader tells them apart by the width of their position embeddings.
    """
    tokenizer = tiny_tokenizer()
    hidden_1, hidden_2, time_dim = 32, 64, 8
    with _seeded(seed):
        unet = _unet(
            cross_attention_dim=hidden_1 + hidden_2,  # the two encoders' hidden states are concatenated
            sample_size=128,
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            # 6 micro-conditioning numbers (original size, crop, target size) + pooled text embedding
            projection_class_embeddings_input_dim=6 * time_dim + hidden_2,
        )
        vae = _vae(scaling_factor=0.13025, sample_size=1024, force_upcast=True)
        text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_1, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, hidden_2, "gelu", projection_dim=hidden_2))
    return {
        "unet": _ready(unet),
        "vae": _ready(vae),
        "text_encoder": _ready(text_encoder),
        "text_encoder_2": _ready(text_encoder_2),
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
    }

def tiny_taesd(seed: int = 0) -> AutoencoderTiny:
    """Stands in for madebyollin/taesd."""
    with _seeded(seed):
        return _ready(_taesd())

def tiny_taesdxl(seed: int = 0) -> AutoencoderTiny:
    """Stands in for madebyollin/taesdxl (same architecture; other weights than tiny_taesd(seed))."""
    with _seeded(seed + 1_000_003):
        return _ready(_taesd())

def tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """ControlNet made from `unet` (ControlNetModel.from_unet) with its zero convs made random.

    A freshly made ControlNet adds exactly zero to the UNet; re-initialising its zero-initialised
    convs makes the control image really change the output, so tests can see that it is used.
    """
    with _seeded(seed):
        # from_unet's own weight copy fails on an LCM UNet: its time embedding has a cond_proj that
        # a ControlNet lacks (real SD1.5 ControlNets, used beside LCM UNets, lack it too). So copy
        # the weights both models have, by name, ourselves.
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        own = controlnet.state_dict()
        shared = {k: v for k, v in unet.state_dict().items() if k in own}
        controlnet.load_state_dict(shared, strict=False)
        # The 1x1 "zero convs" that add the ControlNet's residuals to the UNet: PyTorch's default init.
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.reset_parameters()
        # The control-image encoder (8 convs, the last zero-initialised): with the default init each
        # conv shrinks the signal about 3x and the control image barely reaches the UNet (output
        # differences ~1e-5); a variance-preserving init lets it through (differences ~0.1).
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    return _ready(controlnet)

FLAGGED_SQUARES = 8  # the miniature safety checker's one "concept": an 8 x 8 checkerboard
FLAGGED_THRESHOLD = 0.9  # cosine similarity to it above which a frame is flagged

def tiny_flagged_image(width: int = 256, height: int = 256):
    """The one kind of picture the miniature safety checker flags: a black-and-white checkerboard of
    8 x 8 squares filling the centre square of the frame (the part the checker looks at)."""
    import numpy as np
    from PIL import Image

    side = min(width, height)
    y, x = np.mgrid[0:height, 0:width]
    y, x = y - (height - side) // 2, x - (width - side) // 2  # the squares line up with the centre square
    white = ((x * FLAGGED_SQUARES // side + y * FLAGGED_SQUARES // side) % 2).astype(bool)
    return Image.fromarray(np.where(white[..., None], 255, 0).astype(np.uint8).repeat(3, axis=-1))

def tiny_safety_checker(seed: int = 0):
    """(StableDiffusionSafetyChecker, CLIPImageProcessor) on 32x32 crops, standing in for
    CompVis/stable-diffusion-safety-checker.

    With random weights and the real class's default concepts (all-ones embeddings, thresholds 1)
    nothing is ever flagged, so a test could not tell whether frames went through the checker. The
    miniature one therefore has one concept that it recognises: `tiny_flagged_image()`, a
    checkerboard; every other picture passes. A random CLIP model maps all pictures to much the same
    direction (cosine similarities 0.6 to 0.99 between a checkerboard, plain colours, camera frames
    and noise), so that common direction is taken out of the projection first (measured from three
    plain grey frames); what is left tells the checkerboard apart (similarity 1, under 0.4 for the
    others), and it is concept 0, with threshold FLAGGED_THRESHOLD. The other 16 concepts and the 3
    "special care" ones keep the class's defaults, which match nothing.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor

    clip = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={**clip, "vocab_size": 514, "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513},
        vision_config={**clip, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    with _seeded(seed):
        checker = _ready(StableDiffusionSafetyChecker(config))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})

    def pooled(images) -> torch.Tensor:
        return checker.vision_model(processor(images=images, return_tensors="pt").pixel_values)[1]

    with torch.no_grad():
        projection = checker.visual_projection.weight  # (projection_dim, hidden)
        greys = [Image.new("RGB", (32, 32), (v, v, v)) for v in (0, 128, 255)]
        common = torch.nn.functional.normalize((pooled(greys) @ projection.T).mean(0), dim=0)
        projection -= torch.outer(common, common) @ projection
        checker.concept_embeds[0] = checker.visual_projection(pooled([tiny_flagged_image()]))[0]
        checker.concept_embeds_weights[0] = FLAGGED_THRESHOLD
    return checker, processor

def tiny_lora(unet: UNet2DConditionModel, seed: int = 0, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random LoRA for `unet`'s attention projections, as the state dict `load_lora_weights`
    takes: stands in for a real LoRA such as latent-consistency/lcm-lora-sdxl."""
    from peft import LoraConfig, get_peft_model_state_dict

    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    with _seeded(seed):
        host = UNet2DConditionModel.from_config(unet.config)
        host.add_adapter(config)
        # peft's random init is small; scale it so the LoRA visibly changes the output.
        for name, parameter in host.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.2)
    state = get_peft_model_state_dict(host)
    return {f"unet.{name}": tensor.detach().clone() for name, tensor in state.items()}

def tiny_image_encoder(seed: int = 0):
    """(CLIPVisionModelWithProjection, CLIPImageProcessor) on 32x32 crops, standing in for an
    IP-Adapter's image encoder (h94/IP-Adapter's ViT-H or ViT-bigG) and its processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=16)
    with _seeded(seed):
        encoder = _ready(CLIPVisionModelWithProjection(config))
    return encoder, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})

def tiny_ip_adapter(unet: UNet2DConditionModel, image_encoder, composition: bool, seed: int = 0) -> dict:
    """A random IP-Adapter for `unet` and `image_encoder`, in the layout of the published files that
    diffusers' `load_ip_adapter` reads: {"image_proj": ..., "ip_adapter": {"1.to_k_ip.weight", ...}}.
    Plain: a linear projection of the image embedding to 4 tokens (ip-adapter_sd15); composition: the
    "plus" resampler over the encoder's penultimate hidden states, as ostris/ip-composition-adapter."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    cross = unet.config.cross_attention_dim
    with _seeded(seed):
        if composition:
            resampler = IPAdapterPlusImageProjection(
                embed_dims=image_encoder.config.hidden_size, output_dims=cross, hidden_dims=64, heads=1, num_queries=4
            )
            image_proj = _resampler_to_published(resampler.state_dict())
        else:
            clip = image_encoder.config.projection_dim
            image_proj = {"proj.weight": torch.randn(cross * 4, clip) * clip**-0.5, "proj.bias": torch.zeros(cross * 4),
                          "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
        ip_adapter = {}
        key = 1
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                continue
            hidden = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
            for projection in ("to_k_ip", "to_v_ip"):
                ip_adapter[f"{key}.{projection}.weight"] = torch.randn(hidden, cross) * cross**-0.5
            key += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}

def _resampler_to_published(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' IPAdapterPlusImageProjection names -> the published IP-Adapter Plus names (the inverse
    of diffusers' `_convert_ip_adapter_image_proj_to_diffusers`)."""
    published: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] != "layers":
            published[name] = value
            continue
        layer, rest = parts[1], ".".join(parts[2:])
        renames = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
                   "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
        if rest.startswith(("attn.to_k", "attn.to_v")):
            if rest.startswith("attn.to_k"):
                suffix = rest.removeprefix("attn.to_k")
                published[f"layers.{layer}.0.to_kv{suffix}"] = torch.cat([value, state[name.replace("to_k", "to_v")]])
            continue
        for old, new in renames.items():
            if rest.startswith(old + "."):
                published[f"layers.{layer}.{new}{rest.removeprefix(old)}"] = value
                break
        else:
            raise KeyError(f"unexpected resampler weight {name}")
    return published
