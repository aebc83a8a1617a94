"""Each kind of composition a set-up makes (pipelines/_setups.py) against the stock diffusers pipeline
on the same miniature components: ControlNet stacks (`MultiControlNetModel`, each ControlNet with its
own scale and window), SDXL ControlNets, TCD with its eta, LCM, Euler trailing and ancestral, DDIM,
a swapped UNet (Lightning), a fused LoRA, text to image. The method and the rules are
tests/test_equivalence.py's (same seed, same prompt embeddings, every UNet call recorded, within 1/255);
so are the settings that differ by design (strength off the 1/n grid, frames of another size).

The annotators (Canny, depth, the frame itself for QR) are out of the comparison: the stock pipeline
gets the very control images the set-up computed, as tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

import pipelines
from pipelines._setups import Choices
from tests.test_equivalence import (
    NEGATIVE,
    PROMPT,
    SDXL_SIZE,
    SIZE,
    as_array,
    assert_equivalent,
    camera,
    embeddings,
    generators,
    run_ours,
    run_stock,
    stock_pipeline,
    unet_calls,
)

# (set-up, choices over it, parameters): each on the grid where diffusers and the project mean the same.
CASES: dict[str, tuple[str, Choices | None, dict[str, Any]]] = {
    "sd15 LCM-LoRA, canny + depth stack, CFG": (
        "setup", Choices(base="sd15", accelerator="lcm-lora", controlnets=("canny", "depth")),
        {"steps": 4, "strength": 0.5, "guidance_scale": 1.5, "canny_scale": 0.9, "depth_scale": 0.6,
         "depth_start": 0.5, "depth_end": 1.0},
    ),
    "sd15 Hyper-SD, depth, TCD eta 1": ("controlnetDepthHyperSD", None, {"steps": 2, "strength": 0.5, "eta": 1.0}),
    "sd15 PCM, canny, TCD eta 0.3, canny window": (
        "controlnetPCMSD15", None, {"steps": 4, "strength": 0.75, "eta": 0.3, "canny_start": 0.3, "canny_end": 1.0},
    ),
    "sd15 Flash, depth, LCM": ("controlnetDepthFlashSD", None, {"steps": 4, "strength": 0.5}),
    "sd15 LCM-LoRA, QR monster (the frame as control)": ("controlnetLoraSD15QRCode", None, {"steps": 4, "strength": 0.5}),
    "sd-turbo canny, CFG": ("controlnetSDTurbo", None, {"steps": 2, "strength": 0.5, "guidance_scale": 1.21}),
    "sd15 no accelerator, Euler ancestral, CFG": (
        "setup", Choices(base="sd15", accelerator="none", scheduler="euler_a"), {"steps": 4, "strength": 0.5, "guidance_scale": 3.0},
    ),
    "sd15 no accelerator, DDIM, CFG": (
        "setup", Choices(base="sd15", accelerator="none", scheduler="ddim"), {"steps": 4, "strength": 0.75, "guidance_scale": 3.0},
    ),
    "sdxs one step": ("img2imgSDXS512", None, {"steps": 1, "strength": 1.0}),
    "sdxl Hyper-SD depth, TCD": ("controlnetDepthHyperSDXL", None, {"steps": 2, "strength": 0.5}),
    "sdxl Lightning UNet, canny + line art stack, Euler": (
        "controlnetLoraSDXL-Lightning", Choices(controlnets=("canny", "lineart")),
        {"steps": 2, "strength": 0.5, "lineart_scale": 0.7},
    ),
    "sdxl Turbo": ("img2imgSDXLTurbo", None, {"steps": 2, "strength": 0.5}),
    "vega VegaRT, LCM": ("controlnetSegmindVegaRT", None, {"steps": 2, "strength": 1.0}),
    "sdxl LCM-LoRA text to image, CFG": ("txt2imgLoraSDXL", None, {"steps": 4, "guidance_scale": 1.5}),
    "sd15 LCM-LoRA text to image": ("txt2imgLora", None, {"steps": 4, "guidance_scale": 1.0}),
}


_loaded: dict[str, Any] = {}


def load(name: str, choices: Choices | None) -> Any:
    key = f"{name} {choices}"
    if key not in _loaded:
        module = pipelines.load_module(name, choices)
        _loaded[key] = module.Pipeline(pipelines.ModelOptions(tiny=True), torch.device("cpu"), torch.float32)
    return _loaded[key]


@pytest.mark.parametrize("case", CASES)
def test_set_up_equals_the_stock_diffusers_pipeline(case):
    name, choices, values = CASES[case]
    ours = load(name, choices)
    set_up = pipelines.load_module(name, choices).SET_UP
    sdxl = set_up.family == "sdxl"
    params = ours.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=31, **(SDXL_SIZE if sdxl else SIZE), **values)
    common = {"num_inference_steps": params.steps, "guidance_scale": params.guidance_scale,
              "generator": generators([params]), **embeddings(ours, [params], sdxl=sdxl)}
    if "eta" in type(params).model_fields:
        common["eta"] = params.eta
    if set_up.text_to_image:
        stock = stock_pipeline(StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline, ours)
        ours_result = run_ours(ours, [params], [None])
        theirs = run_stock(stock, width=params.width, height=params.height, **common)
    else:
        frame = camera(5, params.width, params.height)
        ours_result = run_ours(ours, [params], [frame])
        stock = ours.pipe  # the stock diffusers pipeline (with its MultiControlNetModel) the set-up built
        if set_up.controlnets:
            pixels = torch.from_numpy(np.asarray(frame).copy()).permute(2, 0, 1)[None].float() / 255
            kinds = set_up.controlnets
            common |= {
                "control_image": [ours.annotate(kind, [frame], pixels, params) for kind in kinds],
                "controlnet_conditioning_scale": [getattr(params, f"{kind}_scale") for kind in kinds],
                "control_guidance_start": [getattr(params, f"{kind}_start") for kind in kinds],
                "control_guidance_end": [getattr(params, f"{kind}_end") for kind in kinds],
            }
        theirs = run_stock(stock, image=frame, strength=params.strength, **common)
    assert_equivalent(ours_result, theirs)
    runs = params.steps if set_up.text_to_image else int(params.steps * params.strength)
    assert len(ours_result[1]) == runs  # a UNet call a step (CFG's two rows are one batch)


def test_each_control_of_a_stack_changes_the_output():
    ours = load(*CASES["sd15 LCM-LoRA, canny + depth stack, CFG"][:2])
    frame = camera(6)
    base = {"prompt": PROMPT, "seed": 3, "steps": 4, "strength": 0.5, **SIZE}
    both = run_ours(ours, [ours.InputParams(**base)], [frame])[0][0]
    for kind in ("canny", "depth"):
        without = run_ours(ours, [ours.InputParams(**base, **{f"{kind}_scale": 0.0})], [frame])[0][0]
        assert abs(both - without).max() > 2, f"the {kind} ControlNet has no effect"


IP_CASES: dict[str, tuple[str, Choices | None, dict[str, Any]]] = {
    "sd15 composition (plus) adapter, Hyper-SD, TCD": ("IPcompositionHyperSD15", None, {"steps": 2, "strength": 0.5}),
    "sd15 plain adapter, LCM-LoRA, CFG, canny": (
        "setup", Choices(base="sd15", accelerator="lcm-lora", ip_adapter="plain", controlnets=("canny",)),
        {"steps": 4, "strength": 0.75, "guidance_scale": 1.5, "ip_adapter_scale": 0.6},
    ),
    "sdxl composition adapter, Hyper-SD": ("IPcompositionHyperSDXL", None, {"steps": 2, "strength": 1.0}),
}


@pytest.mark.parametrize("case", IP_CASES)
@pytest.mark.parametrize("own_prompt", [True, False], ids=["an image prompt", "the frame as image prompt"])
def test_ip_adapter_set_up_equals_diffusers_with_ip_adapter_image(case, own_prompt):
    name, choices, values = IP_CASES[case]
    ours = load(name, choices)
    set_up = pipelines.load_module(name, choices).SET_UP
    sdxl = set_up.family == "sdxl"
    params = ours.InputParams(prompt=PROMPT, negative_prompt=NEGATIVE, seed=41, **(SDXL_SIZE if sdxl else SIZE), **values)
    frame = camera(7, params.width, params.height)
    image_prompt = camera(8, 200, 150) if own_prompt else None
    with unet_calls(ours.pipe.unet) as calls:
        image = ours.predict_batch([params], [frame], image_prompts=[image_prompt])[0]
    common = {"num_inference_steps": params.steps, "guidance_scale": params.guidance_scale,
              "generator": generators([params]), **embeddings(ours, [params], sdxl=sdxl)}
    if "eta" in type(params).model_fields:
        common["eta"] = params.eta
    if set_up.controlnets:
        pixels = torch.from_numpy(np.asarray(frame).copy()).permute(2, 0, 1)[None].float() / 255
        common |= {"control_image": [ours.annotate("canny", [frame], pixels, params)],
                   "controlnet_conditioning_scale": [params.canny_scale]}
    ours.pipe.set_ip_adapter_scale(params.ip_adapter_scale)
    theirs = run_stock(ours.pipe, image=frame, strength=params.strength, ip_adapter_image=image_prompt or frame, **common)
    assert_equivalent(([as_array(image)], calls), theirs)


def test_an_image_prompt_steers_the_output_and_is_encoded_once():
    ours = load("IPcompositionHyperSD15", None)
    params = ours.InputParams(prompt=PROMPT, seed=5, steps=2, strength=0.5, **SIZE)
    frame = camera(9)
    encoder = ours.pipe.image_encoder
    encoded = []
    handle = encoder.register_forward_pre_hook(lambda module, args: encoded.append(bool(args[0].any())))
    try:
        a = as_array(ours.predict_batch([params], [frame], image_prompts=[camera(10)])[0])
        again = as_array(ours.predict_batch([params], [frame], image_prompts=[camera(10)])[0])
        b = as_array(ours.predict_batch([params], [frame], image_prompts=[camera(11)])[0])
        off = ours.InputParams(**{**params.model_dump(), "ip_adapter_scale": 0.0})
        c = as_array(ours.predict_batch([off], [frame], image_prompts=[camera(10)])[0])
        d = as_array(ours.predict_batch([off], [frame], image_prompts=[camera(11)])[0])
    finally:
        handle.remove()
    assert np.array_equal(a, again) and np.abs(a - b).max() > 2  # the image prompt matters
    assert np.array_equal(c, d)  # at scale 0 it does not
    # camera(10) and camera(11), each encoded once: the cache serves the other three frames; and the
    # negative (an all-zero image, as diffusers' plus adapters take it) at most once, ever
    assert encoded.count(True) == 2 and encoded.count(False) <= 1
