"""The pipeline factory: every module in this package (but the shared ones) is a pipeline.

    import pipelines
    pipe = pipelines.load("img2img", tiny=True)
    image = pipe.predict(pipe.InputParams(prompt="a cat"), camera_frame)
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from pipelines.base import ModelOptions, Pipeline

# Modules of this package that hold shared mechanics rather than a pipeline.
_SHARED_MODULES = {"base", "common", "tiny"}


class UnknownPipeline(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown pipeline {name!r}. Available: {', '.join(available())}")
        self.name = name


def available() -> list[str]:
    """Names of the pipelines that can be loaded."""
    return sorted(
        module.name
        for module in pkgutil.iter_modules(__path__)
        if not module.name.startswith("_") and module.name not in _SHARED_MODULES
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
    from pipelines.common import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    return load_module(name).Pipeline(ModelOptions(**options), torch_device, resolve_dtype(dtype, torch_device))
