"""The miniature models in pipelines/_tiny.py behave like real ones in the real diffusers pipelines.

Run with HF_HUB_OFFLINE=1: nothing here may touch the network.
"""

import glob
import os

import numpy as np
import pytest
import torch
from compel import Compel, CompelForSDXL, ReturnedEmbeddingsType
from diffusers import (
    AutoencoderTiny,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image
from safetensors.torch import load_file

from pipelines import ModelOptions
from pipelines._safety import SafetyChecker
from pipelines._tiny import (
    tiny_controlnet,
    tiny_flagged_image,
    tiny_sd15,
    tiny_sd21,
    tiny_sdxl,
    tiny_taesd,
    tiny_taesdxl,
    tiny_tokenizer,
)
from tests.single_file import save_single_file

NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def lcm_scheduler():
    # As in SimianLuo/LCM_Dreamshaper_v7's scheduler config.
    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def euler_scheduler():
    # As in stabilityai/sd-turbo / sdxl-turbo.
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="trailing"
    )


def sd15_pipe(seed=0, lcm=True):
    return StableDiffusionImg2ImgPipeline(**tiny_sd15(seed, lcm=lcm), scheduler=lcm_scheduler(), **NO_SAFETY)


def sd21_pipe(seed=0):
    return StableDiffusionImg2ImgPipeline(**tiny_sd21(seed), scheduler=euler_scheduler(), **NO_SAFETY)


def sdxl_pipe(seed=0):
    return StableDiffusionXLImg2ImgPipeline(**tiny_sdxl(seed), scheduler=euler_scheduler())


PIPES = {"sd15": sd15_pipe, "sd15-no-lcm": lambda: sd15_pipe(lcm=False), "sd21": sd21_pipe, "sdxl": sdxl_pipe}


def image(seed, size=64):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run(pipe, prompt="a red cat", seed=0, **kwargs):
    """Two denoising steps (strength 0.5 of 4) on a 64x64 frame; returns an HxWx3 float array."""
    if "prompt_embeds" not in kwargs:
        kwargs["prompt"] = prompt
    kwargs.setdefault("image", image(0))
    result = pipe(
        num_inference_steps=4,
        strength=0.5,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    )
    return result.images[0]


def differs(a, b, tolerance=1e-3):
    return float(np.abs(a - b).max()) > tolerance


def weights(components):
    """name -> tensor for every model in a component dict (or a single model)."""
    if isinstance(components, torch.nn.Module):
        components = {"model": components}
    return {
        f"{name}.{key}": value
        for name, model in components.items()
        if isinstance(model, torch.nn.Module)
        for key, value in model.state_dict().items()
    }


BUILDERS = {
    "sd15": tiny_sd15,
    "sd15-no-lcm": lambda seed: tiny_sd15(seed, lcm=False),
    "sd21": tiny_sd21,
    "sdxl": tiny_sdxl,
    "taesd": tiny_taesd,
    "taesdxl": tiny_taesdxl,
    "controlnet": lambda seed: tiny_controlnet(tiny_sd15(0)["unet"], seed),
}


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_gives_distinct_ids_and_pads_with_endoftext(tmp_path):
    tokenizer = tiny_tokenizer()
    red, blue = tokenizer("a red cat").input_ids, tokenizer("a blue cat").input_ids
    assert red != blue
    assert red[0] == tokenizer.bos_token_id and red[-1] == tokenizer.eos_token_id
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>" == tokenizer.eos_token
    padded = tokenizer("a red cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[len(red) :] == [tokenizer.pad_token_id] * (77 - len(red))
    tokenizer.save_pretrained(tmp_path)
    assert type(tokenizer).from_pretrained(tmp_path)("a red cat").input_ids == red


# --- builders -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDERS)
def test_builders_are_deterministic_per_seed(name):
    build = BUILDERS[name]
    first, again, other = weights(build(0)), weights(build(0)), weights(build(1))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_builders_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    tiny_sdxl(7)
    tiny_controlnet(tiny_sd15(7)["unet"], 7)
    assert torch.equal(torch.rand(4), expected)


def test_taesd_and_taesdxl_differ():
    assert any(not torch.equal(a, b) for a, b in zip(weights(tiny_taesd()).values(), weights(tiny_taesdxl()).values()))


@pytest.mark.parametrize("name", BUILDERS)
def test_components_are_float32_eval_and_nothing_is_zero(name):
    built = BUILDERS[name](0)
    models = built.values() if isinstance(built, dict) else [built]
    for model in models:
        if isinstance(model, torch.nn.Module):
            assert not model.training
    for key, value in weights(built).items():
        assert value.dtype == torch.float32 or "position_ids" in key, key
        if value.dim() > 1:  # biases and norm shifts may start at zero, weights may not
            assert value.any(), f"{key} is all zeros"


VAES = {
    "sd15": lambda: tiny_sd15()["vae"],
    "sdxl": lambda: tiny_sdxl()["vae"],
    "taesd": tiny_taesd,
    "taesdxl": tiny_taesdxl,
}


@pytest.mark.parametrize("name", VAES)
def test_vaes_have_latent_scale_factor_8(name):
    """As the real VAEs: a 64x64 image encodes to 8x8 latents, and 8x8 latents decode to 64x64."""
    vae = VAES[name]()
    with torch.no_grad():
        encoded = vae.encode(torch.zeros(1, 3, 64, 64))
        latents = encoded.latents if isinstance(vae, AutoencoderTiny) else encoded.latent_dist.mean
        decoded = vae.decode(torch.zeros(1, 4, 8, 8)).sample
    assert latents.shape == (1, 4, 8, 8)
    assert decoded.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_safety_checker_flags_its_checkerboard_at_any_size_and_nothing_else(dtype):
    """The miniature safety checker's one concept is `tiny_flagged_image()`, a checkerboard (as the
    real one's are nudity): flagged frames come out black, all others pass untouched."""
    checker = SafetyChecker(ModelOptions(tiny=True), torch.device("cpu"), dtype)
    for size in [(256, 256), (320, 240), (240, 320), (64, 48)]:
        flagged = checker(tiny_flagged_image(*size))
        assert flagged.size == size and np.asarray(flagged).max() == 0, size
    y, x = np.mgrid[0:240, 0:320]
    gradient = np.stack([x * 255 // 320, y * 255 // 240, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    squares = (np.arange(256)[:, None] // 64 + np.arange(256)[None, :] // 64) % 2 * 255  # 4 x 4, not 8 x 8
    ordinary = [image(0, 256), image(1, 64), Image.fromarray(gradient), Image.fromarray(squares.astype(np.uint8)).convert("RGB")]
    ordinary += [Image.new("RGB", (64, 48), colour) for colour in [(200, 100, 50), (0, 0, 0), (255, 255, 255)]]
    ordinary.append(Image.fromarray(255 - np.asarray(tiny_flagged_image())))  # the other way round
    for frame in ordinary:
        assert checker(frame) is frame


# --- pipelines ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PIPES)
def test_output_changes_with_prompt_and_seed(name):
    pipe = PIPES[name]()
    out = run(pipe)
    assert out.shape == (64, 64, 3) and np.isfinite(out).all()
    assert np.array_equal(out, run(pipe))
    assert differs(out, run(pipe, prompt="a blue dog"))
    assert differs(out, run(pipe, seed=1))


def test_sdxl_runs_at_128():
    assert run(sdxl_pipe(), image=image(0, 128)).shape == (128, 128, 3)


def test_taesd_in_a_pipeline():
    pipe = sd15_pipe()
    pipe.vae = tiny_taesd()
    out = run(pipe)
    assert out.shape == (64, 64, 3) and differs(out, run(pipe, prompt="a blue dog"))
    xl = sdxl_pipe()
    xl.vae = tiny_taesdxl()
    assert run(xl).shape == (64, 64, 3)


CONTROLNET_PIPES = {
    "sd15": lambda c, cn: StableDiffusionControlNetImg2ImgPipeline(
        **c, controlnet=cn, scheduler=lcm_scheduler(), **NO_SAFETY
    ),
    "sdxl": lambda c, cn: StableDiffusionXLControlNetImg2ImgPipeline(**c, controlnet=cn, scheduler=euler_scheduler()),
}


@pytest.mark.parametrize(
    "name, components",
    [("sd15", lambda: tiny_sd15(lcm=True)), ("sd15", lambda: tiny_sd15(lcm=False)), ("sdxl", tiny_sdxl)],
    ids=["sd15-lcm", "sd15", "sdxl"],
)
def test_controlnet_output_changes_with_control_image(name, components):
    components = components()
    pipe = CONTROLNET_PIPES[name](components, tiny_controlnet(components["unet"]))
    out = run(pipe, control_image=image(1))
    assert np.array_equal(out, run(pipe, control_image=image(1)))
    assert differs(out, run(pipe, control_image=image(2)))
    assert differs(out, run(pipe, control_image=image(1), prompt="a blue dog"))


# --- compel ---------------------------------------------------------------------------------


def test_compel_sd15_weighting_changes_embeddings():
    pipe = sd15_pipe()
    compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    weighted, plain = compel("a (red)++ cat"), compel("a red cat")
    assert weighted.shape == plain.shape == (1, 77, 32)
    assert not torch.allclose(weighted, plain)
    assert differs(run(pipe, prompt_embeds=weighted), run(pipe, prompt_embeds=plain), tolerance=1e-5)


def test_compel_sdxl_weighting_changes_embeddings():
    pipe = sdxl_pipe()
    compel = Compel(
        tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
        text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=[False, True],
    )
    weighted, weighted_pooled = compel("a (red)++ cat")
    plain, plain_pooled = compel("a red cat")
    assert weighted.shape == (1, 77, 96) and weighted_pooled.shape == (1, 64)
    assert not torch.allclose(weighted, plain)
    out = run(pipe, prompt_embeds=weighted, pooled_prompt_embeds=weighted_pooled)
    assert differs(out, run(pipe, prompt_embeds=plain, pooled_prompt_embeds=plain_pooled), tolerance=1e-5)

    # compel 2.x's convenience wrapper gives the same conditioning.
    labelled = CompelForSDXL(pipe)("a (red)++ cat")
    assert torch.allclose(labelled.embeds, weighted) and torch.allclose(labelled.pooled_embeds, weighted_pooled)


# --- saving and loading ---------------------------------------------------------------------


def test_save_pretrained_round_trip(tmp_path):
    pipe = sd15_pipe()
    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionImg2ImgPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(loaded.scheduler, LCMScheduler) and loaded.unet.config.time_cond_proj_dim == 256
    assert np.array_equal(run(pipe), run(loaded))


SINGLE_FILE_PIPES = {
    "sd15": (lambda seed: sd15_pipe(seed, lcm=False), "cond_stage_model.transformer.text_model."),
    "sd21": (sd21_pipe, "cond_stage_model.model."),
    "sdxl": (sdxl_pipe, "conditioner.embedders.1.model."),
}


@pytest.mark.parametrize("name", SINGLE_FILE_PIPES)
def test_single_file_round_trip(tmp_path, name):
    make, text_prefix = SINGLE_FILE_PIPES[name]
    pipe = make(0)
    checkpoint = tmp_path / "model.safetensors"
    save_single_file(pipe, str(checkpoint))
    keys = load_file(checkpoint).keys()
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    assert any(k.startswith(text_prefix) for k in keys)

    # The config folder: a saved pipeline of the same shape but other weights, with the weights
    # deleted, so the loaded weights can only come from the single file.
    config = tmp_path / "config"
    make(1).save_pretrained(config)
    for path in glob.glob(str(config / "*" / "*.safetensors")):
        os.remove(path)

    loaded = type(pipe).from_single_file(str(checkpoint), config=str(config), local_files_only=True)
    for component in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        if hasattr(pipe, component):
            original, reloaded = weights(getattr(pipe, component)), weights(getattr(loaded, component))
            assert original.keys() == reloaded.keys()
            assert all(torch.equal(original[k], reloaded[k]) for k in original), component
    assert np.array_equal(run(pipe), run(loaded))


def test_single_file_refuses_an_lcm_unet(tmp_path):
    with pytest.raises(ValueError, match="LCM"):
        save_single_file(sd15_pipe(lcm=True), str(tmp_path / "model.safetensors"))
