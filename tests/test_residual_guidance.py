"""Residual guidance (StreamDiffusion's RCFG, pipelines/_denoise.py): classifier-free guidance's
effect on image to image without the negative prompt's UNet pass. "self" takes the noise that leads
from the input to the current latents as the unconditional prediction; "initialize" the noise that
leads there from the negative prompt's own first-step estimate (one extra UNet evaluation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import pipelines
from pipelines._setups import Choices
from tests.test_equivalence import NEGATIVE, PROMPT, SIZE, camera, unet_calls

SET_UPS = {
    "euler": Choices(base="sd15", accelerator="none"),  # sigma-space latents
    "lcm": Choices(base="sd15", accelerator="lcm-lora"),  # variance-preserving latents
    "tcd + controlnet": Choices(base="sd15", accelerator="hyper", controlnets=("canny",)),
}
_loaded: dict[str, Any] = {}


def load(kind: str) -> Any:
    if kind not in _loaded:
        module = pipelines.load_module("setup", SET_UPS[kind])
        _loaded[kind] = module.Pipeline(pipelines.ModelOptions(tiny=True), torch.device("cpu"), torch.float32)
    return _loaded[kind]


def draw(pipe: Any, frame: Any = None, **values: Any) -> tuple[np.ndarray, int]:
    """The output, and the UNet evaluations it took (rows of all UNet calls)."""
    params = pipe.InputParams(**{"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 7, "strength": 0.75, **SIZE, **values})
    with unet_calls(pipe.pipe.unet) as calls:
        image = pipe.predict(params, frame or camera(2))
    return np.asarray(image).astype(int), sum(len(call["sample"]) for call in calls)


@pytest.mark.parametrize("kind", SET_UPS)
def test_residual_guidance_takes_half_the_unet_evaluations_of_cfg(kind):
    pipe = load(kind)
    steps = {"steps": 4, "guidance_scale": 3.0 if kind == "euler" else 1.8}
    full, full_rows = draw(pipe, guidance_mode="full", **steps)
    plain, plain_rows = draw(pipe, guidance_mode="full", steps=4, guidance_scale=1.0)
    self_negative, self_rows = draw(pipe, guidance_mode="self", **steps)
    one_time, one_time_rows = draw(pipe, guidance_mode="initialize", **steps)
    assert (plain_rows, full_rows, self_rows, one_time_rows) == (3, 6, 3, 4)  # 4 steps at 0.75: 3 run
    # each guides: unlike no guidance, and each its own way
    for guided in (full, self_negative, one_time):
        assert np.abs(guided - plain).max() > 2
    assert np.abs(self_negative - one_time).max() > 2


@pytest.mark.parametrize("kind", SET_UPS)
def test_one_time_negative_at_one_step_is_cfg(kind):
    # With one step the one-time negative's estimate is measured at that very step: the residual is
    # the negative prompt's own prediction, and the step is CFG's.
    pipe = load(kind)
    values = {"steps": 1, "strength": 1.0, "guidance_scale": 1.8}
    full, _ = draw(pipe, guidance_mode="full", **values)
    one_time, _ = draw(pipe, guidance_mode="initialize", **values)
    assert np.abs(full - one_time).max() <= 1


def test_delta_scales_the_residual_and_the_negative_prompt_matters_only_to_initialize():
    pipe = load("lcm")
    values = {"steps": 4, "guidance_scale": 1.8, "guidance_mode": "self"}
    assert np.abs(draw(pipe, **values, residual_delta=1.0)[0] - draw(pipe, **values, residual_delta=0.5)[0]).max() > 2
    assert np.array_equal(draw(pipe, **values)[0], draw(pipe, **values, negative_prompt="something else")[0])
    values["guidance_mode"] = "initialize"
    assert np.abs(draw(pipe, **values)[0] - draw(pipe, **values, negative_prompt="something else")[0]).max() > 2


def test_residual_guidance_with_temporal_consistency_keeps_one_row_a_frame():
    pipe = load("lcm")
    params = pipe.InputParams(prompt=PROMPT, seed=3, steps=4, strength=0.5, guidance_scale=1.8, guidance_mode="initialize",
                              temporal_consistency=0.5, **SIZE)
    assert pipe.memory_bytes(params) == pipe.memory_bytes(params.model_copy(update={"guidance_scale": 1.0}))
    memory = pipe.new_memory()
    first = pipe.predict(params, camera(3), memory)
    second = pipe.predict(params, camera(3), memory)
    assert memory.nbytes() == pipe.memory_bytes(params)
    assert first.size == second.size


def test_guidance_modes_are_offered_where_cfg_runs():
    def fields(name: str, choices: Choices | None = None) -> set[str]:
        return set(pipelines.load_module(name, choices).InputParams.model_fields)

    assert "guidance_mode" in fields("controlnetSDTurbo")
    assert "guidance_mode" not in fields("txt2imgLoraSDXL")  # text to image: no input to be the reference
    assert "guidance_mode" not in fields("setup", Choices(base="lcm-dreamshaper"))  # LCM-distilled: no CFG at all
    with pytest.raises(ValueError):
        pipelines.load_module("controlnetSDTurbo").InputParams(guidance_mode="half")


def test_the_benchmark_counts_half_the_unet_evaluations_of_cfg(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "bench" / "residual_guidance.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["mode"]: r["unet_rows_per_frame"] for r in json.loads((tmp_path / "out.json").read_text())["results"]}
    assert rows == {"no guidance": 2, "full CFG": 4, "self-negative": 2, "one-time negative": 3}
    assert "| self-negative | 2 |" in result.stdout  # the printed table
