"""The pipeline factory (pipelines/__init__.py), from Python and from the command line."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import pipelines
from bench.live import SERVER_MAIN, server_env


def run_main(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(SERVER_MAIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=server_env(),
        cwd="/",
    )
    return result, time.monotonic() - started


def test_available_lists_pipelines_and_not_shared_modules():
    names = pipelines.available()
    assert "img2img" in names
    assert not {"base", "common", "tiny", "__init__"} & set(names)
    assert names == sorted(names)



@pytest.mark.parametrize(
    "name",
    [
        "nope", "base", "common", "tiny", "", "IMG2IMG", "img2img.py", "pipelines/img2img", "bench.nope",
        "./img2img", "pipelines._base", "os.path",
    ],
)
def test_unknown_name_raises_listing_the_available_ones(name):
    with pytest.raises(pipelines.UnknownPipeline) as error:
        pipelines.load_module(name)
    message = str(error.value)
    assert repr(name) in message
    for available in pipelines.available():
        assert available in message


def test_load_of_an_unknown_name_raises_before_building_anything():
    with pytest.raises(pipelines.UnknownPipeline):
        pipelines.load("nope", tiny=True)
    assert issubclass(pipelines.UnknownPipeline, ValueError)


def test_every_available_pipeline_declares_the_contract():
    for name in pipelines.available():
        module = pipelines.load_module(name)
        assert module.Info().name == name
        assert module.Info().input_mode in ("image", "text")
        assert issubclass(module.InputParams, pipelines.ParamsModel)
        module.InputParams()  # defaults are valid
        assert callable(getattr(module.Pipeline, "predict"))


def test_command_line_unknown_pipeline_exits_2_at_once_with_the_list():
    result, elapsed = run_main("--pipeline", "nope")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Unknown pipeline 'nope'" in output
    assert "Available: " + ", ".join(pipelines.available()) in output
    assert "Traceback" not in output and "Open http" not in output
    assert elapsed < 15, f"took {elapsed:.1f} s: nothing should load before the name is checked"


@pytest.mark.parametrize("name", ["./img2img", "pipelines._base"])
def test_command_line_name_that_is_no_pipeline_exits_2_with_the_list(name):
    result, _ = run_main("--pipeline", name)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output[-2000:]
    assert "Available: " + ", ".join(pipelines.available()) in output


def test_command_line_lists_pipelines_and_set_ups():
    result, _ = run_main("--list-pipelines")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    # the modules, then every anchor module name (ours or composed), then the composed set-up
    assert names[: len(pipelines.available())] == pipelines.available()
    assert set(pipelines.setups()) | {"img2img", "txt2img"} <= set(names)
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["controlnetDepthHyperSDXL"] == "SDXL 1.0 + Hyper-SD (1-step LoRA, TCD), ControlNet depth"
    assert lines["controlnet"] == "= controlnet_canny"
    assert lines["pix2pixTurbo"] == "= pix2pix_turbo"
    assert "Open http" not in result.stdout + result.stderr


def test_library_use_as_in_the_docs():
    # pipelines/__init__.py's docstring (and the README): load by name, predict on a camera frame.
    pipe = pipelines.load("img2img", tiny=True)
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    image = pipe.predict(pipe.InputParams(prompt="a cat", width=256, height=320), frame)
    assert isinstance(image, Image.Image)
    assert image.size == (256, 320) and image.mode == "RGB"
    # Noise from random weights, but real pixels: not a flat or black image.
    assert np.asarray(image).std() > 1
