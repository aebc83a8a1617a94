"""The pipeline factory, and the contract every pipeline module follows.

    import pipelines
    pipe = pipelines.load("img2img", tiny=True)
    image = pipe.predict(pipe.InputParams(prompt="a cat"), camera_frame)
    pipe = pipelines.load("controlnetDepthHyperSDXL", tiny=True)  # a model set-up, by the anchor's name

Every module of this package is a pipeline, except the shared mechanics, whose names start with an
underscore: `_base` (the contract: `PipelineInfo`, `ParamsModel` and its field helpers, exported
here), `_loading`, `_device`, `_prompts`, `_denoise`, `_lora`, `_images`, `_safety`, `_pipeline`
(the base class of the diffusers pipelines), `_tiny` (miniature models), `_setups` (model set-ups as
choices of base, accelerator, scheduler and ControlNets, and the anchor's modules by name),
`_composed` (the pipeline a set-up makes), `_annotators` (depth models for ControlNets) and `_pix2pix`
(pix2pix-turbo's model: its adapters, VAE skips and edges).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from pipelines._base import (
    CFG_GUIDANCE,
    LCM_GUIDANCE,
    BatchPipeline,
    ModelLoadError,
    ModelMismatch,
    ModelOptions,
    ModelUnavailable,
    ParamsModel,
    Pipeline,
    PipelineInfo,
    SupportsBatch,
    SupportsImagePrompt,
    SupportsStreamMemory,
    batch_key,
    checkbox_field,
    guidance_field,
    negative_prompt_field,
    prompt_field,
    range_field,
    seed_field,
    select_field,
    size_field,
    steps_field,
    strength_field,
    temporal_field,
)
from pipelines._setups import Choices, SetUpError

__all__ = [
    "CFG_GUIDANCE",
    "COMPOSED",
    "LCM_GUIDANCE",
    "BatchPipeline",
    "Choices",
    "ModelLoadError",
    "ModelMismatch",
    "ModelOptions",
    "ModelUnavailable",
    "ParamsModel",
    "Pipeline",
    "PipelineInfo",
    "SetUpError",
    "SupportsBatch",
    "SupportsImagePrompt",
    "SupportsStreamMemory",
    "UnknownPipeline",
    "available",
    "batch_key",
    "catalogue",
    "checkbox_field",
    "guidance_field",
    "load",
    "load_module",
    "negative_prompt_field",
    "prompt_field",
    "range_field",
    "seed_field",
    "select_field",
    "setups",
    "size_field",
    "steps_field",
    "strength_field",
    "temporal_field",
]


COMPOSED = "setup"  # the set-up that --base, --accelerator, --scheduler and --controlnet compose


class UnknownPipeline(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"Unknown pipeline {name!r}. Available: {', '.join(available())}; "
            f"set-ups: {', '.join(setups())} (or --base, --accelerator, --controlnet)"
        )
        self.name = name


def available() -> list[str]:
    """Names of the pipelines that can be loaded."""
    return sorted(
        module.name
        for module in pkgutil.iter_modules(__path__)
        if not module.name.startswith("_")
    )


def setups() -> list[str]:
    """Names of the model set-ups (pipelines/_setups.py: the anchor's modules), loaded like pipelines."""
    from pipelines._setups import ANCHOR_MODULES, ANCHORS

    return sorted([*ANCHORS, *ANCHOR_MODULES], key=str.lower)


def catalogue() -> list[tuple[str, str]]:
    """What --list-pipelines prints: (name, what it is) for every module, then every set-up. Reads no model and imports no module (their docstrings are read
    from the files)."""
    import ast
    from pathlib import Path

    from pipelines._setups import ANCHOR_MODULES, ANCHORS

    rows = []
    for name in available():
        docstring = ast.get_docstring(ast.parse(Path(__path__[0], f"{name}.py").read_text())) or ""
        rows.append((name, docstring.split(":")[0].split("\n")[0]))
    for name in setups():
        rows.append((name, f"= {ANCHOR_MODULES[name]}" if name in ANCHOR_MODULES else ANCHORS[name].describe()))
    rows.append((COMPOSED, "the set-up of --base, --accelerator, --scheduler and --controlnet"))
    return rows


def load_module(name: str, choices: Choices | None = None) -> ModuleType:
    """Import `pipelines.<name>`, or make a set-up's module; an unknown name raises `UnknownPipeline`
    listing what exists, and choices that do not fit raise `SetUpError`, before any model loads.

    `choices` (the server's --base, --accelerator, --scheduler, --controlnet) change a named set-up,
    or make one of their own under the name `setup`. A dotted name (`bench.echo_pipeline`) imports
    that module instead: a pipeline kept outside this package, such as the benchmarks' and tests'
    stand-in models.
    """
    from pipelines._setups import ANCHOR_MODULES, ANCHORS, SetUpError

    if name in ANCHORS or name == COMPOSED:
        chosen = choices or Choices()
        set_up = (chosen.apply(ANCHORS[name]) if name in ANCHORS else chosen.compose()).check()  # before torch loads
        from pipelines._composed import setup_module

        return setup_module(name, set_up)
    if choices is not None and choices != Choices():
        raise SetUpError(
            f"--base, --accelerator, --scheduler and --controlnet shape a set-up; {name!r} is not one. "
            f"Leave --pipeline out, or name a set-up: {', '.join(setups())}"
        )
    name = ANCHOR_MODULES.get(name, name)
    if "." in name:
        try:
            module = importlib.import_module(name)
        except (ImportError, TypeError, ValueError):  # no such module, or not a module name at all
            raise UnknownPipeline(name) from None
        if not all(hasattr(module, part) for part in ("Info", "InputParams", "Pipeline")):
            raise UnknownPipeline(name)
        return module
    if name not in available():
        raise UnknownPipeline(name)
    return importlib.import_module(f"{__name__}.{name}")


def load(name: str, device: str = "auto", dtype: str = "auto", **options: Any) -> Pipeline:
    """Build a pipeline by name for use as a library; `options` are `ModelOptions` fields."""
    from pipelines._device import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    return load_module(name).Pipeline(ModelOptions(**options), torch_device, resolve_dtype(dtype, torch_device))
