"""The pipeline factory, and the contract every pipeline module follows.

    import pipelines
    pipe = pipelines.load("img2img", tiny=True)
    image = pipe.predict(pipe.InputParams(prompt="a cat"), camera_frame)

Every module of this package is a pipeline, except the shared mechanics, whose names start with an
underscore: `_base` (the contract: `PipelineInfo`, `ParamsModel` and its field helpers, exported
here), `_loading`, `_device`, `_prompts`, `_denoise`, `_lora`, `_images`, `_safety`, `_pipeline`
(the base class of the diffusers pipelines) and `_tiny` (miniature models).
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

__all__ = [
    "CFG_GUIDANCE", "LCM_GUIDANCE", "BatchPipeline", "ModelLoadError", "ModelMismatch", "ModelOptions", "ModelUnavailable", "ParamsModel",
    "Pipeline", "PipelineInfo", "SupportsBatch", "SupportsStreamMemory", "UnknownPipeline", "available", "batch_key", "checkbox_field", "guidance_field",
    "load", "load_module", "negative_prompt_field", "prompt_field", "range_field", "seed_field", "select_field",
    "size_field", "steps_field", "strength_field", "temporal_field",
]


class UnknownPipeline(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown pipeline {name!r}. Available: {', '.join(available())}")
        self.name = name


def available() -> list[str]:
    """Names of the pipelines that can be loaded."""
    return sorted(
        module.name
        for module in pkgutil.iter_modules(__path__)
        if not module.name.startswith("_")
    )


def load_module(name: str) -> ModuleType:
    """Import `pipelines.<name>`; an unknown name raises `UnknownPipeline` listing what exists.

    A dotted name (`bench.echo_pipeline`) imports that module instead: a pipeline kept outside this
    package, such as the benchmarks' and tests' stand-in models.
    """
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
