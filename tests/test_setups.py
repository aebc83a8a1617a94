"""Model set-ups (pipelines/_setups.py, pipelines/_composed.py): every module name of the anchor
loads, choices that cannot work together are refused before anything loads, and the real loading
code reads each kind of file a set-up needs from miniature models saved to a folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import save_file

import pipelines
import pipelines._setups
from bench.live import SERVER_MAIN, server_env
from pipelines import _tiny as tiny
from pipelines._annotators import DEPTH_ANYTHING_ID, tiny_depth_model
from pipelines._setups import Choices, SetUpError

# Real-Time-Latent-Consistency-Model's modules (../shared/reference/MODEL-SETUPS.md; its server/pipelines/
# holds these 29), written out here so that a set-up dropped from the table fails this test.
ANCHOR_MODULES = [
    "img2img", "txt2img", "controlnet", "txt2imgLora", "controlnetLoraSD15", "controlnetLoraSD15QRCode",
    "img2imgSDTurbo", "controlnetSDTurbo", "pix2pixTurbo", "controlnetHyperSD", "controlnetDepthHyperSD",
    "controlnetFlashSD", "controlnetDepthFlashSD", "controlnetPCMSD15", "IPcompositionHyperSD15",
    "controlnetLoraSDXL", "txt2imgLoraSDXL", "img2imgSDXL-Lightning", "controlnetLoraSDXL-Lightning",
    "controlnetHyperSDXL", "controlnetDepthHyperSDXL", "controlnetMistoLineHyperSDXL", "IPcompositionHyperSDXL",
    "controlnetFlashSDXL", "img2imgSDXLTurbo", "controlnetSDXLTurbo", "img2imgSegmindVegaRT",
    "controlnetSegmindVegaRT", "img2imgSDXS512",
]


def frame(seed: int = 0, width: int = 320, height: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = 255  # a square: edges, depth, lines to find
    return Image.fromarray(pixels)


def smallest(module) -> dict[str, int]:
    fields = module.InputParams.model_fields
    low = min(m.ge for m in fields["width"].metadata if hasattr(m, "ge"))
    return {"width": low, "height": low}


def test_each_anchor_module_is_here():
    assert set(ANCHOR_MODULES) <= set(pipelines.setups()) | set(pipelines.available())


@pytest.mark.parametrize("name", ANCHOR_MODULES)
def test_every_anchor_module_name_declares_the_contract(name):
    module = pipelines.load_module(name)
    info = module.Info()
    assert info.input_mode == ("text" if name.startswith("txt2img") else "image")
    params = module.InputParams()  # the defaults are valid
    assert params.prompt
    assert issubclass(module.InputParams, pipelines.ParamsModel)
    schema = module.InputParams.model_json_schema()
    for field in schema["properties"].values():
        assert field["id"] and field["field"]  # what the page builds its controls from


def test_named_set_ups_keep_the_anchors_defaults():
    sd_turbo = pipelines.load_module("controlnetSDTurbo").InputParams()
    assert (sd_turbo.guidance_scale, sd_turbo.strength, sd_turbo.canny_scale) == (1.21, 0.8, 0.325)
    hyper = pipelines.load_module("controlnetDepthHyperSDXL").InputParams()
    assert (hyper.steps, hyper.eta, hyper.width, hyper.height, hyper.depth_scale) == (2, 1.0, 1024, 1024, 0.5)
    pcm = pipelines.load_module("controlnetPCMSD15").InputParams()
    assert pcm.steps == 4 and pcm.eta == 0.0  # the anchor's PCM runs TCD without fresh noise
    assert pipelines.load_module("controlnetPCMSD15", Choices(accelerator="pcm:8")).InputParams().steps == 8


@pytest.mark.parametrize("name", sorted(pipelines._setups.ANCHORS))
def test_a_named_set_ups_defaults_are_its_parameters(name):
    set_up = pipelines._setups.ANCHORS[name]
    params = pipelines.load_module(name).InputParams()
    assert {key: getattr(params, key) for key in set_up.defaults} == set_up.defaults


def test_choices_change_a_named_set_up_or_compose_one():
    other = pipelines.load_module("controlnetSDTurbo", Choices(controlnets=("depth",))).InputParams()
    assert other.guidance_scale == 1.21 and not hasattr(other, "canny_scale")
    stacked = pipelines.load_module("controlnetHyperSD", Choices(controlnets=("depth", "canny")))
    fields = stacked.InputParams.model_fields
    assert {"depth_scale", "depth_start", "depth_end", "canny_scale", "canny_low"} <= set(fields)
    assert stacked.SET_UP.controlnets == ("depth", "canny") and stacked.SET_UP.accelerator == "hyper"
    composed = pipelines.load_module("setup", Choices(base="sdxl", accelerator="hyper", controlnets=("depth",)))
    assert composed.Info().name == "setup"
    assert composed.Info().title == "SDXL 1.0 + Hyper-SD (1-step LoRA, TCD), ControlNet depth"
    assert pipelines.load_module("setup", Choices(base="sdxl")).SET_UP.accelerator == "lcm-lora"
    assert pipelines.load_module("setup", Choices(accelerator="lightning")).SET_UP.base == "sdxl"
    assert pipelines.load_module("setup", Choices(accelerator="vegart")).SET_UP.base == "vega"
    euler_a = pipelines.load_module("setup", Choices(base="sd15", accelerator="none", scheduler="euler_a"))
    assert euler_a.SET_UP.scheduler_name == "euler_a" and "eta" not in euler_a.InputParams.model_fields


@pytest.mark.parametrize(
    ("name", "choices", "message"),
    [
        ("setup", Choices(base="sd15", accelerator="lightning"), "does not fit base 'sd15'"),
        ("setup", Choices(base="sdxl-turbo", accelerator="lcm-lora"), "For this base: turbo, none"),
        ("setup", Choices(base="sd21", controlnets=("qr",)), "no qr ControlNet for SD 2.1"),
        ("setup", Choices(base="sd15", accelerator="pcm:3"), "no 3-step weights (variants: 4, 2, 8, 16)"),
        ("setup", Choices(base="sd15", accelerator="pcm:x"), "a step count, such as pcm:8"),
        ("setup", Choices(base="sd15", accelerator="vegart"), "does not fit base 'sd15'"),
        ("setup", Choices(base="sdxl", scheduler="dpm"), "Unknown scheduler 'dpm'"),
        ("setup", Choices(base="sd3"), "Unknown base 'sd3'"),
        ("setup", Choices(base="sd15", controlnets=("canny", "canny")), "named twice"),
        ("setup", Choices(base="sd15", controlnets=("pose",)), "Unknown ControlNet 'pose'"),
        ("txt2imgLora", Choices(controlnets=("canny",)), "text-to-image set-up has no frame"),
        ("img2img", Choices(base="sdxl"), "'img2img' is not one"),
        ("bench.echo_pipeline", Choices(controlnets=("canny",)), "is not one"),
    ],
)
def test_choices_that_cannot_work_are_refused_saying_why(name, choices, message):
    with pytest.raises(SetUpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipelines.load_module(name, choices)


def test_parameters_are_bounded_and_ordered():
    params = pipelines.load_module("controlnetHyperSD", Choices(controlnets=("depth", "canny"))).InputParams
    with pytest.raises(ValidationError, match="depth_start"):
        params(depth_start=0.8, depth_end=0.2)
    with pytest.raises(ValidationError, match="canny_low"):
        params(canny_low=200, canny_high=100)
    with pytest.raises(ValidationError):
        params(canny_scale=2.5)
    with pytest.raises(ValidationError):
        params(steps=16)  # Hyper-SD: at most 15
    with pytest.raises(ValidationError):
        params(controlnet_scale=0.5)  # a name of another set-up: unknown keys are errors


def run_main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = server_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SERVER_MAIN), "--port", "0", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)


def test_command_line_refuses_a_combination_before_any_download(tmp_path):
    # No --tiny, an empty offline hub cache: had anything been fetched first, the error would be another.
    result = run_main(tmp_path, "--base", "sd15", "--controlnet", "depth", "--accelerator", "lightning")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "Accelerator 'lightning' (SDXL-Lightning UNet) does not fit base 'sd15'" in output
    assert "Traceback" not in output and "not in the local Hugging Face cache" not in output
    result = run_main(tmp_path, "--pipeline", "img2img", "--controlnet", "canny")
    assert result.returncode == 2 and "'img2img' is not one" in result.stdout + result.stderr


def test_without_the_hub_a_set_up_names_the_first_missing_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module = pipelines.load_module("controlnetDepthHyperSDXL")
    with pytest.raises(pipelines.ModelUnavailable, match="'diffusers/controlnet-depth-sdxl-1.0' is not in the local Hugging Face cache") as error:
        module.Pipeline(pipelines.ModelOptions(), torch.device("cpu"), torch.float32)
    assert "--tiny" in str(error.value)


# --- loading from folders and files, as a user with their own copies would ------------------------


def test_a_set_up_loads_every_part_from_local_folders_and_files(tmp_path):
    """Base folder, accelerator LoRA file, two ControlNet folders and a depth model folder, no hub: the
    output equals the one from the same weights built in memory, and each part changes it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS

    components = tiny.tiny_sd15(seed=4, lcm=False)
    StableDiffusionImg2ImgPipeline(**components, scheduler=EulerDiscreteScheduler(**SD_BETAS), **NO_SAFETY_CHECKER
                                   ).save_pretrained(tmp_path / "base")
    lora = tiny.tiny_lora(components["unet"], seed=5)
    StableDiffusionImg2ImgPipeline.save_lora_weights(
        str(tmp_path / "hyper"), unet_lora_layers={k.removeprefix("unet."): v for k, v in lora.items()}
    )
    tiny.tiny_controlnet(components["unet"], seed=6).save_pretrained(tmp_path / "canny")
    tiny.tiny_controlnet(components["unet"], seed=7).save_pretrained(tmp_path / "depth")
    tiny_depth_model(DEPTH_ANYTHING_ID, seed=8).save_pretrained(tmp_path / "depth-model")

    def load(**changes):
        options = {
            "model_id": str(tmp_path / "base"), "taesd": False,
            "accelerator_id": str(tmp_path / "hyper" / "pytorch_lora_weights.safetensors"),
            "controlnet_ids": (("canny", str(tmp_path / "canny")), ("depth", str(tmp_path / "depth"))),
            "depth_model": str(tmp_path / "depth-model"),
        } | changes
        module = pipelines.load_module("controlnetHyperSD", Choices(controlnets=("canny", "depth")))
        return module.Pipeline(pipelines.ModelOptions(**options), torch.device("cpu"), torch.float32)

    def draw(pipe) -> np.ndarray:
        params = pipe.InputParams(prompt="a lighthouse", width=256, height=256, canny_scale=1.0, depth_scale=1.0)
        return np.asarray(pipe.predict(params, frame(1))).astype(int)

    reference = draw(load())
    assert draw(load()).tolist() == reference.tolist()  # deterministic
    assert np.abs(draw(load(accelerator_id=str(tmp_path / "hyper"))) - reference).max() <= 1  # the folder, as the file
    tiny.tiny_controlnet(components["unet"], seed=9).save_pretrained(tmp_path / "other")
    assert np.abs(draw(load(controlnet_ids=(("canny", str(tmp_path / "other")), ("depth", str(tmp_path / "depth")))))
                  - reference).max() > 2  # the canny folder is used
    tiny_depth_model(DEPTH_ANYTHING_ID, seed=10).save_pretrained(tmp_path / "other-depth")
    assert np.abs(draw(load(depth_model=str(tmp_path / "other-depth"))) - reference).max() > 2  # the depth model is used


def test_parts_of_another_family_are_refused_saying_so(tmp_path):
    sdxl = tiny.tiny_sdxl()
    tiny.tiny_controlnet(sdxl["unet"]).save_pretrained(tmp_path / "sdxl-canny")
    module = pipelines.load_module("controlnetHyperSD")
    options = pipelines.ModelOptions(tiny=True, controlnet_ids=(("canny", str(tmp_path / "sdxl-canny")),))
    # --tiny builds its own ControlNets: load the folder as a user's real run would, on a tiny base folder
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS

    StableDiffusionImg2ImgPipeline(**tiny.tiny_sd15(lcm=False), scheduler=EulerDiscreteScheduler(**SD_BETAS),
                                   **NO_SAFETY_CHECKER).save_pretrained(tmp_path / "base")
    options = options.model_copy(update={"tiny": False, "model_id": str(tmp_path / "base"), "taesd": False})
    with pytest.raises(pipelines.ModelMismatch, match="The canny ControlNet does not fit this base: it was made for SDXL"):
        module.Pipeline(options, torch.device("cpu"), torch.float32)
    # an SDXL-Lightning UNet file on an SD 1.5 base
    save_file(sdxl["unet"].state_dict(), str(tmp_path / "lightning.safetensors"))
    lightning = pipelines.load_module("img2imgSDXL-Lightning")
    tiny_sd15_folder = options.model_copy(update={"controlnet_ids": (), "accelerator_id": str(tmp_path / "lightning.safetensors")})
    with pytest.raises(pipelines.ModelMismatch):
        lightning.Pipeline(tiny_sd15_folder, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("name", ["img2imgSDXL-Lightning", "img2img_sdxl_lcm_lora"])
def test_a_lora_of_another_family_is_refused_saying_so(tmp_path, name):
    from diffusers import StableDiffusionImg2ImgPipeline

    lora = tiny.tiny_lora(tiny.tiny_sd15(lcm=False)["unet"], seed=5)
    StableDiffusionImg2ImgPipeline.save_lora_weights(str(tmp_path), unet_lora_layers={k.removeprefix("unet."): v for k, v in lora.items()})
    module = pipelines.load_module(name)
    with pytest.raises(pipelines.ModelMismatch, match="does not fit this model: a LoRA works only on the family"):
        module.Pipeline(pipelines.ModelOptions(tiny=True, loras=(str(tmp_path),)), torch.device("cpu"), torch.float32)
    if name.endswith("Lightning"):  # the accelerator's own LoRA slot too
        sd15 = pipelines.load_module("controlnetHyperSDXL")
        with pytest.raises(pipelines.ModelMismatch, match="does not fit this model"):
            from pipelines._lora import fuse_lora

            pipe = sd15.Pipeline(pipelines.ModelOptions(tiny=True), torch.device("cpu"), torch.float32).pipe
            fuse_lora(pipe, str(tmp_path), "other")


def test_a_lightning_unet_file_replaces_the_base_unet(tmp_path):
    from diffusers import UNet2DConditionModel

    module = pipelines.load_module("img2imgSDXL-Lightning")
    tiny_pipe = module.Pipeline(pipelines.ModelOptions(tiny=True), torch.device("cpu"), torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12)
        other = UNet2DConditionModel.from_config(tiny_pipe.pipe.unet.config)
    save_file(other.state_dict(), str(tmp_path / "unet.safetensors"))
    from pipelines._composed import load_unet_weights

    load_unet_weights(tiny_pipe.pipe.unet, str(tmp_path / "unet.safetensors"), torch.float32)
    loaded = tiny_pipe.pipe.unet.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in other.state_dict().items())
    with pytest.raises(pipelines.ModelUnavailable, match="no such file or folder"):
        load_unet_weights(tiny_pipe.pipe.unet, "./no/such/unet.safetensors", torch.float32)


def test_the_readme_table_names_every_anchor_module_and_its_commands_start_it():
    from server.config import parse

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in readme.splitlines() if line.startswith("| `")}
    for name in ANCHOR_MODULES:
        assert name in rows, f"{name} is missing from the README's table"
        row = rows[name]
        assert f"`--pipeline {name}`" in row
        if ", or `--base" in row:  # the same set-up from the flags alone
            flags = row.split(", or `")[1].split("`")[0].split()
            config = parse(flags)
            composed = pipelines.load_module(config.pipeline, config.set_up_choices()).SET_UP
            named = pipelines.load_module(name).SET_UP
            assert (composed.base, composed.accelerator, composed.controlnets, composed.ip_adapter) == (
                named.base, named.accelerator, named.controlnets, named.ip_adapter)
            assert config.model_id == named.model_id


def test_an_ip_adapter_and_its_image_encoder_load_from_local_files(tmp_path):
    """The adapter as a .safetensors file in the published layout and the encoder as a folder, on a
    base folder, no hub: loaded, and in use."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS

    components = tiny.tiny_sd15(seed=4, lcm=False)
    StableDiffusionImg2ImgPipeline(**components, scheduler=EulerDiscreteScheduler(**SD_BETAS), **NO_SAFETY_CHECKER
                                   ).save_pretrained(tmp_path / "base")
    encoder, _ = tiny.tiny_image_encoder(seed=2)
    encoder.save_pretrained(tmp_path / "encoder")
    adapter = tiny.tiny_ip_adapter(components["unet"], encoder, composition=True, seed=3)
    save_file({f"{part}.{key}": value.contiguous() for part, weights in adapter.items() for key, value in weights.items()},
              str(tmp_path / "adapter.safetensors"))
    module = pipelines.load_module("setup", Choices(base="sd15", accelerator="none", ip_adapter="composition"))
    options = pipelines.ModelOptions(model_id=str(tmp_path / "base"), taesd=False, ip_adapter_id=str(tmp_path / "adapter.safetensors"),
                                     image_encoder_id=str(tmp_path / "encoder"))
    pipe = module.Pipeline(options, torch.device("cpu"), torch.float32)
    params = pipe.InputParams(prompt="a lighthouse", width=256, height=256, steps=2, strength=0.5, ip_adapter_scale=1.0)
    with_prompt = np.asarray(pipe.predict_batch([params], [frame(1)], image_prompts=[frame(2)])[0]).astype(int)
    other = np.asarray(pipe.predict_batch([params], [frame(1)], image_prompts=[frame(3)])[0]).astype(int)
    assert np.abs(with_prompt - other).max() > 2  # the adapter is in use
    with pytest.raises(pipelines.ModelUnavailable, match="no such file"):
        module.Pipeline(options.model_copy(update={"ip_adapter_id": "./missing.safetensors"}), torch.device("cpu"), torch.float32)
