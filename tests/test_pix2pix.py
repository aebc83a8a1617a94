"""pix2pix-turbo (pipelines/pix2pix_turbo.py, pipelines/_pix2pix.py) against the paper computed with
stock diffusers and peft: the weights loaded as their authors load them (peft adapters, tensors copied
into the state dicts), the input encoded by AutoencoderKL.encode, one UNet call at timestep 999, the
clean latent from DDPMScheduler.step, the decoder with the skips added before each block by hooks.
Also: the published layout read from a file, a URL and refused when wrong; the Scharr edges."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils.peft_utils import set_weights_and_activate_adapters
from peft import LoraConfig
from PIL import Image, ImageDraw
from transformers import CLIPTextModel, CLIPTokenizer

import pipelines
from pipelines import _pix2pix
from pipelines import _tiny as tiny
from pipelines._base import ModelMismatch, ModelOptions, ModelUnavailable
from pipelines._loading import NO_SAFETY_CHECKER, SD_BETAS

SIZE = 256


def camera_frame() -> Image.Image:
    image = Image.fromarray(np.random.default_rng(3).integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 90, 70), fill=(250, 250, 250))
    draw.ellipse((50, 60, 120, 120), fill=(10, 10, 10))
    return image


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A miniature sd-turbo saved as a diffusers folder, and miniature pix2pix-turbo weights for it
    saved as the published .pkl is."""
    folder = tmp_path_factory.mktemp("pix2pix")
    components = tiny.tiny_sd21()
    StableDiffusionPipeline(
        **components, scheduler=DDPMScheduler(**SD_BETAS, clip_sample=False), **NO_SAFETY_CHECKER
    ).save_pretrained(folder / "sd-turbo")
    weights = _pix2pix.tiny_weights(components["unet"], components["vae"], seed=1)
    torch.save(weights, folder / "edge_to_image_loras.pkl")
    return folder / "sd-turbo", folder / "edge_to_image_loras.pkl", weights


def ours(model: Path, weights: Path | str) -> pipelines.Pipeline:
    module = pipelines.load_module("pix2pix_turbo")
    options = ModelOptions(model_id=str(model), pix2pix_weights=str(weights), compel=False)
    return module.Pipeline(options, torch.device("cpu"), torch.float32)


def the_papers(model: Path, weights: dict, edges: torch.Tensor, prompt: str, seed: int, r: float) -> torch.Tensor:
    """pix2pix-turbo as its paper and published weights describe it, on stock diffusers modules."""
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    scheduler.set_timesteps(timesteps=[999])  # one step, from 999 to the clean image
    # The skips, as the published tensors name them; the miniature VAE's blocks are 8, 16, 32, 32 wide
    # (SD's: 128, 256, 512, 512, hence 512->512, 256->512, 128->512, 128->256).
    for name, (inputs, outputs) in {"skip_conv_1": (32, 32), "skip_conv_2": (16, 32),
                                    "skip_conv_3": (8, 32), "skip_conv_4": (8, 16)}.items():
        setattr(vae.decoder, name, torch.nn.Conv2d(inputs, outputs, kernel_size=1, bias=False))
    unet.add_adapter(LoraConfig(r=weights["rank_unet"], init_lora_weights="gaussian",
                                target_modules=weights["unet_lora_target_modules"]))
    vae.add_adapter(LoraConfig(r=weights["rank_vae"], init_lora_weights="gaussian",
                               target_modules=weights["vae_lora_target_modules"]), adapter_name="vae_skip")
    for model_, state in ((unet, weights["state_dict_unet"]), (vae, weights["state_dict_vae"])):
        full = model_.state_dict()
        full.update(state)
        model_.load_state_dict(full)
    unet.set_adapters(["default"], weights=[r])
    set_weights_and_activate_adapters(vae, ["vae_skip"], [r])

    skips: list[torch.Tensor] = []
    hooks = [block.register_forward_pre_hook(lambda module, args: skips.append(args[0])) for block in vae.encoder.down_blocks]
    with torch.no_grad():
        ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
        embeds = text_encoder(ids)[0]
        generator = torch.Generator().manual_seed(seed)
        posterior = vae.encode(edges).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator) if r < 1 else 0  # the seed's noise first
        latents = posterior.sample(generator) * vae.config.scaling_factor
        latents = latents * r + noise * (1 - r) if r < 1 else latents
        prediction = unet(latents, torch.tensor([999]), encoder_hidden_states=embeds).sample
        clean = scheduler.step(prediction, 999, latents, generator=generator).prev_sample
        for hook in hooks:
            hook.remove()
        up_blocks = vae.decoder.up_blocks
        for i, block in enumerate(up_blocks):
            skip_conv = getattr(vae.decoder, f"skip_conv_{i + 1}")
            skip = skips[len(up_blocks) - 1 - i]
            block.register_forward_pre_hook(
                lambda module, args, conv=skip_conv, skip=skip: (args[0] + conv(skip * r), *args[1:])
            )
        return vae.decode(clean / vae.config.scaling_factor).sample.clamp(-1, 1)


@pytest.mark.parametrize("r", [1.0, 0.4])
def test_pix2pix_turbo_equals_the_paper_on_stock_diffusers(saved, r):
    """Deterministic (r = 1) and stochastic (r = 0.4), loaded from a local folder and a local .pkl."""
    model, weights_file, weights = saved
    pipe = ours(model, weights_file)
    params = pipe.InputParams(prompt="a lighthouse at dusk", seed=5, deterministic=r == 1, noise_r=r,
                              width=SIZE, height=SIZE)
    output = np.asarray(pipe.predict(params, camera_frame()), dtype=np.int16)

    pixels = torch.from_numpy(np.array(camera_frame())).permute(2, 0, 1)[None].float() / 255
    edges = _pix2pix.scharr_edges(pixels, 0.0, 1.0)
    expected = the_papers(model, weights, edges, "a lighthouse at dusk", 5, r)
    expected = expected[0].permute(1, 2, 0).add(1).mul(127.5).round().clamp(0, 255).numpy().astype(np.int16)
    assert np.abs(output - expected).max() <= 1
    assert output.std() > 5  # an image, not a flat field


def test_the_adapters_skips_and_fidelity_change_the_output(saved):
    model, weights_file, _ = saved
    pipe = ours(model, weights_file)

    def run(**values) -> np.ndarray:
        return np.asarray(pipe.predict(pipe.InputParams(width=SIZE, height=SIZE, **values), camera_frame()), dtype=np.int16)

    deterministic = run(seed=1)
    stochastic = run(seed=1, deterministic=False, noise_r=0.3)
    assert np.abs(stochastic - deterministic).mean() > 1
    assert not np.array_equal(stochastic, run(seed=2, deterministic=False, noise_r=0.3))  # the seed's noise
    assert np.array_equal(deterministic, run(seed=1, deterministic=False, noise_r=1.0))  # r = 1 is deterministic
    assert np.array_equal(deterministic, run(seed=1))  # after a stochastic frame, back to the full adapters
    shown = run(seed=1, debug_canny=True)
    corner = (slice(SIZE - SIZE // 4, SIZE), slice(SIZE - SIZE // 4, SIZE))
    assert not np.array_equal(shown[corner], deterministic[corner])
    assert np.array_equal(shown[: SIZE // 2], deterministic[: SIZE // 2])


def test_scharr_edges_are_opencvs_scharr_normalised_and_thresholded():
    frame = np.array(camera_frame())
    pixels = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    luma = (frame.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])
    magnitude = np.hypot(cv2.Scharr(luma, cv2.CV_64F, 1, 0), cv2.Scharr(luma, cv2.CV_64F, 0, 1))
    inner = (slice(1, -1), slice(1, -1))  # OpenCV reflects at the border, the model's edges replicate it
    edges = _pix2pix.scharr_edges(pixels, 0.0, 1.0)[0, 0].numpy()
    assert np.allclose(edges[inner] * magnitude[inner].max(), magnitude[inner], atol=1e-3 * magnitude.max())
    strict = _pix2pix.scharr_edges(pixels, 0.2, 0.6)[0, 0].numpy()
    assert set(np.unique(strict[edges >= 0.6])) == {1.0} and set(np.unique(strict[edges <= 0.2])) == {0.0}
    flat = _pix2pix.scharr_edges(torch.full((1, 3, 32, 32), 0.5), 0.0, 1.0)
    assert torch.count_nonzero(flat) == 0  # no NaN, and no edge drawn around the frame
    assert _pix2pix.scharr_edges(pixels, 0.0, 1.0).shape == (1, 3, SIZE, SIZE)


def test_the_edge_thresholds_are_ordered():
    module = pipelines.load_module("pix2pixTurbo")  # the anchor's name
    assert module.Info().name == "pix2pix_turbo"
    with pytest.raises(ValueError, match="canny_low_threshold .0.8. must not exceed canny_high_threshold .0.2."):
        module.InputParams(canny_low_threshold=0.8, canny_high_threshold=0.2)
    with pytest.raises(ValueError, match="noise_r"):
        module.InputParams(noise_r=1.5)


def test_weights_that_are_not_pix2pix_turbos_are_refused(saved, tmp_path):
    model, _, weights = saved
    with pytest.raises(ModelUnavailable, match="no such file"):
        ours(model, tmp_path / "missing.pkl")
    torch.save({"state_dict": {}}, tmp_path / "other.pkl")
    with pytest.raises(ModelMismatch, match="not in the published layout"):
        ours(model, tmp_path / "other.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a torch file")
    with pytest.raises(ModelMismatch, match="could not be read"):
        ours(model, tmp_path / "junk.pkl")
    torch.save({**weights, "extra": Path("/")}, tmp_path / "objects.pkl")  # an object weights_only refuses
    with pytest.raises(ModelMismatch, match="could not be read"):
        ours(model, tmp_path / "objects.pkl")
    sd15 = tiny.tiny_sd15()  # weights made for another model family
    torch.save(_pix2pix.tiny_weights(sd15["unet"], sd15["vae"]), tmp_path / "sd15.pkl")
    with pytest.raises(ModelMismatch, match="do not fit this UNet"):
        ours(model, tmp_path / "sd15.pkl")


def test_the_published_weights_download_once_and_offline_is_said(saved, tmp_path, monkeypatch):
    """From an http URL (a real server on loopback) into the Hugging Face cache folder, once."""
    from huggingface_hub import constants

    model, weights_file, _ = saved
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs with it set
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(weights_file.parent), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{weights_file.name}"
    try:
        first = ours(model, url)
        second = ours(model, url)
    finally:
        server.shutdown()
        server.server_close()  # refused from now on, not left waiting on a listening socket
    assert len(requests) == 1
    assert (tmp_path / "hf" / "live-diffusion" / weights_file.name).read_bytes() == weights_file.read_bytes()
    params = first.InputParams(width=SIZE, height=SIZE)
    assert np.array_equal(np.asarray(first.predict(params, camera_frame())), np.asarray(second.predict(params, camera_frame())))

    with pytest.raises(ModelUnavailable, match="could not be downloaded"):  # the server is gone
        ours(model, url.replace(weights_file.name, "other.pkl"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        ours(model, url.replace(weights_file.name, "other.pkl"))
    assert not list((tmp_path / "hf" / "live-diffusion").glob(".part-*"))  # no partial download left behind
