"""Every pipeline, with miniature models, through the same contract: in-process, and streaming through
the real server."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image, ImageDraw
from pydantic import ValidationError

import pipelines
from bench.live import Client, LiveUser, camera_pixels, jpeg_size, mjpeg_frames, run_server, take
from pipelines import _tiny as tiny
from pipelines._loading import SD_BETAS, ModelMismatch
from pipelines._lora import LoraSpec
from tests.single_file import save_single_file

ALL = pipelines.available()
IMAGE_PIPELINES = [name for name in ALL if pipelines.load_module(name).Info().input_mode == "image"]
# The denoisers, which have strength, steps and guidance (pix2pix-turbo has one fixed step, no guidance).
DENOISING = [name for name in ALL if "guidance_scale" in pipelines.load_module(name).InputParams.model_fields]


def size_for(name: str) -> dict[str, int]:
    low = pipelines.load_module(name).InputParams.model_fields["width"].metadata
    smallest = min(m.ge for m in low if hasattr(m, "ge"))
    return {"width": smallest, "height": smallest + 64}


def camera_frame(seed: int = 0) -> Image.Image:
    """A camera-like frame with shapes, so edge detectors and encoders have something to see."""
    image = Image.fromarray(camera_pixels(seed))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40 + seed * 10, 40, 200, 180), fill=(250, 250, 250))
    draw.ellipse((150, 60, 300, 220), fill=(10, 10, 10))
    return image


_loaded: dict[str, pipelines.Pipeline] = {}


def load(name: str) -> pipelines.Pipeline:
    if name not in _loaded:
        _loaded[name] = pipelines.load(name, tiny=True, dtype="float32")
    return _loaded[name]


def run(pipe: pipelines.Pipeline, name: str, image: Image.Image | None = None, **values) -> np.ndarray:
    params = pipe.InputParams(**{**size_for(name), **values})
    is_image = pipelines.load_module(name).Info().input_mode == "image"
    return np.asarray(pipe.predict(params, (image or camera_frame()) if is_image else None), dtype=np.int16)


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    # Pipelines are deterministic (tested below), so any real difference comes from the change;
    # random miniature weights make some differences small.
    return a.shape == b.shape and np.abs(a - b).mean() > 0.05


@pytest.mark.parametrize("name", ALL)
def test_output_has_the_requested_size_and_is_reproducible(name):
    pipe = load(name)
    first = run(pipe, name, seed=7)
    size = size_for(name)
    assert first.shape == (size["height"], size["width"], 3)
    assert np.array_equal(first, run(pipe, name, seed=7))


@pytest.mark.parametrize("name", ALL)
def test_prompt_and_seed_change_the_output(name):
    pipe = load(name)
    base = run(pipe, name, prompt="a red house", seed=1)
    assert differs(base, run(pipe, name, prompt="a blue whale in the deep sea", seed=1))
    assert differs(base, run(pipe, name, prompt="a red house", seed=2))


@pytest.mark.parametrize("name", IMAGE_PIPELINES)
def test_strength_and_the_input_frame_change_the_output(name):
    pipe = load(name)
    # pix2pix-turbo's counterpart of strength: how much of the input it keeps against noise.
    strength = ({"strength": 0.5}, {"strength": 0.9}) if name in DENOISING else ({}, {"deterministic": False, "noise_r": 0.5})
    base = run(pipe, name, **strength[0])
    assert differs(base, run(pipe, name, **strength[1]))
    assert differs(base, run(pipe, name, image=camera_frame(5), **strength[0]))


@pytest.mark.parametrize("name", IMAGE_PIPELINES)
def test_prompt_embeddings_are_cached_across_frames(name):
    pipe = load(name)
    run(pipe, name, prompt="a cached prompt")
    misses = pipe.prompts.misses
    for seed in range(3):
        run(pipe, name, image=camera_frame(seed), prompt="a cached prompt")
    assert pipe.prompts.misses == misses
    run(pipe, name, prompt="a new prompt")
    assert pipe.prompts.misses == misses + 1


@pytest.mark.parametrize("name", ALL)
def test_bad_parameters_are_refused_by_name(name):
    params = load(name).InputParams
    cases = [({"steps": 0}, "steps"), ({"width": 4000}, "width"), ({"guidance_scale": 9}, "guidance_scale"), ({"seed": -1}, "seed")]
    for values, field in [case for case in cases if case[1] in params.model_fields]:
        with pytest.raises(ValidationError) as error:
            params(**values)
        assert error.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("name", ALL)
def test_compel_weights_change_the_embeddings(name):
    prompts = load(name).prompts
    plain, weighted = prompts("a red cat"), prompts("a (red)++ cat")
    assert not torch.equal(plain.embeds, weighted.embeds)


def lcm_distilled(name: str) -> bool:
    """The pipeline's UNet takes the guidance scale as an embedding (LCM-distilled)."""
    return load(name).pipe.unet.config.time_cond_proj_dim is not None


@pytest.mark.parametrize("name", DENOISING)
def test_the_negative_prompt_works_where_guidance_is_classifier_free(name):
    """Above 1, guidance runs a second UNet pass against the negative prompt, except with an
    LCM-distilled UNet, which takes the scale as its guidance embedding: there, as in diffusers' LCM
    pipelines, the negative prompt has no effect but the scale does (tests/test_equivalence.py
    compares both with the stock pipelines)."""
    pipe = load(name)
    a = run(pipe, name, guidance_scale=1.5, negative_prompt="")
    b = run(pipe, name, guidance_scale=1.5, negative_prompt="dark, gloomy, grey")
    assert differs(a, b) != lcm_distilled(name)
    c = run(pipe, name, guidance_scale=0.5, negative_prompt="")
    d = run(pipe, name, guidance_scale=0.5, negative_prompt="dark, gloomy, grey")
    assert np.array_equal(c, d)
    if lcm_distilled(name):
        assert differs(a, c)  # the scale reaches the guidance embedding


@pytest.mark.parametrize("name", DENOISING)
def test_guidance_costs_a_second_unet_pass_only_where_it_is_classifier_free(name):
    pipe = load(name)
    values = {"guidance_scale": 1.5, "steps": 1, **({"strength": 1.0} if name in IMAGE_PIPELINES else {})}
    batches = []
    hook = pipe.pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        run(pipe, name, **values)
    finally:
        hook.remove()
    assert set(batches) == ({1} if lcm_distilled(name) else {2})


def test_sdxl_has_pooled_and_negative_pooled_embeddings():
    embeds = load("img2img_sdxl_lcm_lora").prompts("a cat", "a dog")
    assert embeds.pooled is not None and embeds.negative_pooled is not None
    assert embeds.pooled.shape == embeds.negative_pooled.shape
    assert not torch.equal(embeds.pooled, embeds.negative_pooled)


def test_sdxl_loads_its_lcm_lora_fused():
    # The miniature LCM-LoRA is fused: no adapter layers remain, the weights changed.
    pipe = load("img2img_sdxl_lcm_lora").pipe
    assert pipe.get_list_adapters() == {}
    plain = tiny.tiny_sdxl()["unet"]
    assert not torch.equal(
        plain.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight,
        pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight,
    )


def test_sd_turbo_runs_one_unet_call_without_guidance():
    pipe = load("img2img_sd_turbo")
    batches = []
    hook = pipe.pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        run(pipe, "img2img_sd_turbo")
    finally:
        hook.remove()
    assert batches == [1]


def test_canny_thresholds_and_the_edge_map():
    module = pipelines.load_module("controlnet_canny")
    with pytest.raises(ValidationError, match="canny_low .200. must not exceed canny_high .100."):
        module.InputParams(canny_low=200, canny_high=100)
    with pytest.raises(ValidationError, match="control_start"):
        module.InputParams(control_start=0.8, control_end=0.2)
    edges = module.canny(camera_frame(), 100, 200)
    assert set(np.unique(edges)) == {0, 255}
    assert np.count_nonzero(module.canny(Image.new("RGB", (64, 64), (90, 90, 90)), 100, 200)) == 0  # flat: no NaN, no edges


def test_controlnet_follows_the_edges_and_can_show_them():
    pipe = load("controlnet_canny")
    base = run(pipe, "controlnet_canny", controlnet_scale=1.0)
    assert differs(base, run(pipe, "controlnet_canny", controlnet_scale=0.0))
    # Faint shapes show up as edges only with low thresholds.
    faint = Image.new("RGB", (320, 240), (100, 100, 100))
    ImageDraw.Draw(faint).rectangle((60, 60, 260, 180), fill=(130, 130, 130))
    strict = run(pipe, "controlnet_canny", image=faint, canny_low=100, canny_high=200)
    assert differs(strict, run(pipe, "controlnet_canny", image=faint, canny_low=10, canny_high=20))
    debug = run(pipe, "controlnet_canny", controlnet_scale=1.0, debug_canny=True)
    h, w = debug.shape[:2]
    corner = debug[h - h // 4 :, w - w // 4 :]
    assert set(np.unique(corner)) <= set(range(0, 256)) and np.array_equal(corner[..., 0], corner[..., 1])
    assert np.array_equal(debug[: h // 2, : w // 2], base[: h // 2, : w // 2])


def save_tiny_lora(folder, unet) -> None:
    lora = {k.removeprefix("unet."): v for k, v in tiny.tiny_lora(unet, seed=11).items()}
    StableDiffusionImg2ImgPipeline.save_lora_weights(str(folder), unet_lora_layers=lora)


def test_lora_changes_the_output_and_weight_zero_is_the_base(tmp_path):
    save_tiny_lora(tmp_path, load("img2img").pipe.unet)
    base = run(load("img2img"), "img2img", seed=3)
    with_lora = pipelines.load("img2img", tiny=True, dtype="float32", loras=(f"{tmp_path}:1.0",))
    assert "lora_scale" in with_lora.InputParams.model_fields
    assert differs(base, run(with_lora, "img2img", seed=3))
    assert np.abs(run(with_lora, "img2img", seed=3, lora_scale=0.0) - base).max() <= 1
    weight_zero = pipelines.load("img2img", tiny=True, dtype="float32", loras=(f"{tmp_path}:0",))
    assert np.abs(run(weight_zero, "img2img", seed=3) - base).max() <= 1
    fused = pipelines.load("img2img", tiny=True, dtype="float32", loras=(str(tmp_path / "pytorch_lora_weights.safetensors"),), fuse_loras=True)
    assert "lora_scale" not in fused.InputParams.model_fields
    assert np.abs(run(fused, "img2img", seed=3) - run(with_lora, "img2img", seed=3)).max() <= 2


def test_lora_spec_parsing():
    assert LoraSpec.parse("user/style-lora") == LoraSpec("user/style-lora", 1.0)
    assert LoraSpec.parse("user/style-lora:0.7") == LoraSpec("user/style-lora", 0.7)
    assert LoraSpec.parse("C:/loras/x.safetensors") == LoraSpec("C:/loras/x.safetensors", 1.0)


def test_a_model_of_another_family_fails_clearly(tmp_path):
    from diffusers import LCMScheduler, StableDiffusionXLImg2ImgPipeline

    StableDiffusionXLImg2ImgPipeline(**tiny.tiny_sdxl(), scheduler=LCMScheduler(**SD_BETAS)).save_pretrained(tmp_path)
    with pytest.raises(ModelMismatch, match="does not fit this Stable Diffusion 1.x/2.x pipeline"):
        pipelines.load("img2img", model_id=str(tmp_path), taesd=False)


def test_sdxl_single_file_checkpoint_loads(tmp_path):
    from diffusers import LCMScheduler, StableDiffusionXLImg2ImgPipeline

    source = StableDiffusionXLImg2ImgPipeline(**tiny.tiny_sdxl(seed=4), scheduler=LCMScheduler(**SD_BETAS))
    source.save_pretrained(tmp_path / "config")
    save_single_file(source, str(tmp_path / "model.safetensors"))
    lcm_lora = tmp_path / "lcm-lora"
    StableDiffusionXLImg2ImgPipeline.save_lora_weights(
        str(lcm_lora), unet_lora_layers={k.removeprefix("unet."): v for k, v in tiny.tiny_lora(source.unet).items()}
    )
    pipe = pipelines.load(
        "img2img_sdxl_lcm_lora", dtype="float32", taesd=False, lcm_lora_id=str(lcm_lora),
        model_id=str(tmp_path / "model.safetensors"), model_config_id=str(tmp_path / "config"),
    )
    assert run(pipe, "img2img_sdxl_lcm_lora").shape == (576, 512, 3)


# --- through the real server ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_every_pipeline_streams_through_the_server(name):
    with run_server("--tiny", "--pipeline", name) as server:
        assert_streams(server, name)


def assert_streams(server, name: str, frames: int = 2) -> None:
    """The page's conversation: settings name the pipeline, a stream of frames of the asked size."""

    async def scenario():
        client = Client(server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            settings = (await http.get(f"{server.http}/api/settings")).json()
            properties = settings["info"]["properties"]
            assert properties["name"]["default"] == name
            stream = mjpeg_frames(server, client.user_id, http)
            width = settings["input_params"]["properties"]["width"]
            size = {"width": width["min"], "height": width["min"] + 64}
            text = properties["input_mode"]["default"] == "text"
            pump = asyncio.create_task(client.pump(size) if not text else text_pump(client, size))
            shown = await take(stream, frames)
            pump.cancel()
        await client.close()
        assert {jpeg_size(f) for f in shown} == {(size["width"], size["height"])}

    asyncio.run(scenario())


async def text_pump(client: Client, size: dict[str, int]) -> None:
    """A text-pipeline client: parameters only, a new seed each time, so every request generates."""
    seed = 0
    while True:
        message = await client.recv(60)
        if message["status"] == "send_frame":
            seed += 1
            await client.send_frame({**size, "seed": seed}, None)


def test_text_pipeline_generates_only_when_parameters_change():
    with run_server("--tiny", "--pipeline", "txt2img") as server:

        async def scenario():
            client = Client(server)
            await client.connect()
            async with httpx.AsyncClient(timeout=60) as http:
                stream = mjpeg_frames(server, client.user_id, http)
                params = {"prompt": "a lighthouse", "width": 256, "height": 256}  # the pump sends what it holds
                pump = asyncio.create_task(client.pump(params))
                await take(stream, 1)
                await asyncio.sleep(1.5)  # the page keeps answering send_frame with the same parameters
                assert server.health()["frames_generated"] == 1  # one frame, however often it answered
                params["prompt"] = "a windmill"  # the server kept asking (slowly), so a change is picked up
                await take(stream, 1)
                assert server.health()["frames_generated"] == 2
                pump.cancel()
            await client.close()

        asyncio.run(scenario())


def test_server_loads_a_lora_from_the_command_line(tmp_path):
    save_tiny_lora(tmp_path, tiny.tiny_sd15(lcm=True)["unet"])
    with run_server("--tiny", "--lora", f"{tmp_path}:0.8") as server:
        settings = httpx.get(f"{server.http}/api/settings").json()
        assert settings["input_params"]["properties"]["lora_scale"]["field"] == "range"
        server.wait_for_log("Loading LoRA")

        async def scenario():
            async with LiveUser(server, {"width": 256, "height": 256, "lora_scale": 0.5}) as user:
                assert len(await user.frames(1)) == 1
                assert user.messages == []

        asyncio.run(scenario())


@pytest.mark.parametrize("name", ALL)
def test_a_batch_gives_each_frame_what_it_would_get_alone(name):
    pipe = load(name)
    is_image = name in IMAGE_PIPELINES
    batch = [pipe.InputParams(**size_for(name), prompt=p, seed=s) for p, s in [("a red house", 1), ("a (blue)++ whale", 2)]]
    images = [camera_frame(0), camera_frame(3)] if is_image else [None, None]
    together = [np.asarray(i, dtype=np.int16) for i in pipe.predict_batch(batch, images)]
    alone = [np.asarray(pipe.predict(p, i), dtype=np.int16) for p, i in zip(batch, images)]
    for a, b in zip(together, alone):
        assert np.abs(a - b).mean() < 0.5 and np.abs(a - b).max() <= 16  # batched float maths rounds a little differently
    assert differs(together[0], together[1])


def test_frames_of_several_users_run_as_one_batch():
    with run_server("--tiny", "--max-batch", "4") as server:

        async def scenario():
            users = [LiveUser(server, {"prompt": f"user {i}", "seed": i, "width": 256, "height": 256}) for i in range(3)]
            async with contextlib.AsyncExitStack() as stack:
                for user in users:
                    await stack.enter_async_context(user)
                frames = await asyncio.gather(*(user.frames(4) for user in users))
            assert all(len(f) == 4 for f in frames)
            health = server.health()
            assert health["frames_generated"] > health["batches"]  # some model calls served several users

        asyncio.run(scenario())
