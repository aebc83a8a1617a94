"""The real model-loading code on miniature models saved to disk: a diffusers folder and a single-file
checkpoint served by the real server (not --tiny), and the failures a user meets when no model is
there. Nothing here touches the network (HF_HUB_OFFLINE=1, and an empty HF_HOME)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline

import pipelines
from bench.live import SERVER_MAIN, LiveUser, camera_jpeg, jpeg_size, run_server, server_env
from pipelines import _tiny as tiny
from pipelines._loading import SD_BETAS
from pipelines.img2img import InputParams
from server.imaging import decode_jpeg, encode_jpeg
from tests.single_file import save_single_file

NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
PARAMS = {"prompt": "a red cat", "width": 256, "height": 256, "seed": 11}
FRAME = camera_jpeg(21)
CAPS = {"max_bytes": 10_000_000, "max_pixels": 10_000_000}


def tiny_img2img(seed: int, lcm: bool) -> StableDiffusionImg2ImgPipeline:
    """A miniature StableDiffusionImg2ImgPipeline built as pipelines/img2img.py builds its --tiny one."""
    return StableDiffusionImg2ImgPipeline(
        **tiny.tiny_sd15(seed=seed, lcm=lcm), scheduler=LCMScheduler(**SD_BETAS), **NO_SAFETY
    )


def stream_frames(server, count: int = 2) -> list[bytes]:
    """Connect as the web page does, answer send_frame with PARAMS and FRAME, read the MJPEG stream."""

    async def go() -> list[bytes]:
        async with LiveUser(server, PARAMS, jpeg=FRAME) as user:
            frames = await user.frames(count)
        assert user.messages == []  # no errors
        return frames

    return asyncio.run(go())


def expected_frame(**options) -> np.ndarray:
    """What the library makes of FRAME with PARAMS, loaded in this process, as the server would send it."""
    pipe = pipelines.load("img2img", dtype="float32", taesd=False, **options)
    output = pipe.predict(InputParams(**PARAMS), decode_jpeg(FRAME, **CAPS))
    return pixels(encode_jpeg(output, quality=85))


def pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(decode_jpeg(jpeg, **CAPS)).astype(np.int16)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).mean()) < 1.0


def offline_env(tmp_path: Path) -> dict[str, str]:
    # An empty Hugging Face cache: the result must not depend on what this machine has cached.
    return server_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")


def run_main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVER_MAIN), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=offline_env(tmp_path),
        cwd=tmp_path,
    )


# --- a diffusers folder -------------------------------------------------------------------------------


def test_server_serves_a_saved_diffusers_folder(tmp_path):
    folder = tmp_path / "my-model"
    tiny_img2img(seed=3, lcm=True).save_pretrained(folder)  # other weights than --tiny's (seed 0)
    assert (folder / "model_index.json").is_file()

    with run_server(
        "--model-id", str(folder), "--no-taesd", "--pipeline", "img2img", "--dtype", "float32",
        env=offline_env(tmp_path),
    ) as server:
        frames = stream_frames(server)
        health = server.health()
        assert str(folder) in server.log  # the log says which model it serves

    assert [jpeg_size(f) for f in frames] == [(256, 256)] * 2
    assert health["model_loaded"] is True
    assert health["model"] == str(folder)
    assert health["pipeline"] == "img2img" and health["dtype"] == "float32"
    # The frames come from the saved weights: as the library makes them from the folder, and not as
    # the built-in miniature model makes them.
    served = pixels(frames[-1])
    assert close(served, expected_frame(model_id=str(folder)))
    assert not close(served, expected_frame(tiny=True))


# --- a single-file checkpoint ------------------------------------------------------------------------


def test_server_serves_a_single_file_checkpoint(tmp_path):
    pipe = tiny_img2img(seed=4, lcm=False)  # the single-file layout has no place for an LCM UNet
    checkpoint = tmp_path / "my-model.safetensors"
    save_single_file(pipe, str(checkpoint))
    reference = tmp_path / "reference"
    pipe.save_pretrained(reference)
    # The config folder holds configs only: the weights can come from nowhere but the checkpoint.
    config = tmp_path / "config"
    shutil.copytree(reference, config)
    for weights in config.glob("*/*.safetensors"):
        weights.unlink()
    assert not list(config.glob("*/*.safetensors"))

    with run_server(
        "--model-id", str(checkpoint), "--model-config-id", str(config), "--no-taesd", "--dtype", "float32",
        env=offline_env(tmp_path),
    ) as server:
        frames = stream_frames(server)
        health = server.health()
        assert str(checkpoint) in server.log

    assert [jpeg_size(f) for f in frames] == [(256, 256)] * 2
    assert health["model"] == str(checkpoint)
    assert close(pixels(frames[-1]), expected_frame(model_id=str(reference)))


def test_single_file_without_configs_offline_says_what_to_do(tmp_path):
    checkpoint = tmp_path / "my-model.safetensors"
    save_single_file(tiny_img2img(seed=4, lcm=False), str(checkpoint))
    result = run_main(tmp_path, "--model-id", str(checkpoint), "--no-taesd")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Open http" not in output
    assert "Traceback" not in output, output[-3000:]
    assert "--model-config-id" in output


# --- no model ------------------------------------------------------------------------------------------


def test_missing_model_fails_at_once_saying_what_to_do(tmp_path):
    result = run_main(tmp_path)  # the default model, not cached, no hub
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # At once: the check of the local cache says so before any download is tried (and retried).
    assert "cannot be downloaded (HF_HUB_OFFLINE is set)" in output
    assert "--tiny" in output and "--model-id" in output
    assert "SimianLuo/LCM_Dreamshaper_v7" in output  # which model is missing
    assert "Open http" not in output
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize(
    "missing",
    [
        "/no/such/model",
        "missing.safetensors",
        "models/sd/mine",  # a mistyped relative path: also not a valid hub id
    ],
)
def test_model_id_path_that_does_not_exist_fails_clearly(tmp_path, missing):
    result = run_main(tmp_path, "--model-id", missing)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Open http" not in output
    assert "Traceback" not in output, output[-3000:]
    assert missing in output


def test_model_id_folder_that_is_not_a_model_fails_clearly(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    result = run_main(tmp_path, "--model-id", str(folder))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Open http" not in output
    assert "Traceback" not in output, output[-3000:]
    assert str(folder) in output and "model_index.json" in output
