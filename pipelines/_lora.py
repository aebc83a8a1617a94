"""LoRAs through peft: `--lora ID_OR_PATH[:WEIGHT]` as adapters with a live `lora_scale` parameter,
or fused into the weights; and fusing a LoRA a pipeline is built with (the LCM-LoRA of SDXL)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines._base import ModelMismatch, ParamsModel, range_field
from pipelines._loading import SINGLE_FILE_SUFFIXES, ModelUnavailable, ensure_hub_model, hub_parts, is_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSpec:
    """`--lora ID_OR_PATH[:WEIGHT]`: a hub id, a folder or a .safetensors file, and its weight."""

    source: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> LoraSpec:
        source, colon, weight = spec.rpartition(":")
        if colon and source:
            try:
                return cls(source, float(weight))
            except ValueError:
                pass  # a colon that is part of the path
        return cls(spec)

def load_lora(pipe: Any, source: str | dict[str, torch.Tensor], adapter_name: str) -> None:
    """Load one LoRA through peft from a hub id, a folder, a .safetensors file (also one inside a hub
    repository: "owner/repo/path/in/repo.safetensors") or a state dict. One made for another model
    family raises ModelMismatch."""
    try:
        _load(pipe, source, adapter_name)
    except (RuntimeError, ValueError, KeyError) as error:  # shapes of another family, keys of no known layout
        label = "(built in)" if isinstance(source, dict) else repr(source)
        detail = str(error).strip().splitlines()[-1].strip()[:200]
        raise ModelMismatch(
            f"LoRA {label} does not fit this model: a LoRA works only on the family it was trained for "
            f"(SD 1.5, SD 2.1 or SDXL). ({detail})"
        ) from None

def _load(pipe: Any, source: str | dict[str, torch.Tensor], adapter_name: str) -> None:
    if isinstance(source, dict):
        pipe.load_lora_weights(source, adapter_name=adapter_name)
        return
    path = Path(source).expanduser()
    repo, inner = hub_parts(source)
    if path.is_file():
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    elif path.is_dir():
        pipe.load_lora_weights(str(path), adapter_name=adapter_name)
    elif is_local(source) or (source.endswith(SINGLE_FILE_SUFFIXES) and not inner):
        raise ModelUnavailable(f"LoRA {source!r}: no such file or folder")
    else:  # a hub id, or a file in a hub repository
        ensure_hub_model(repo)
        folder, _, name = inner.rpartition("/")
        where = {"weight_name": name, "subfolder": folder or None} if inner else {}
        pipe.load_lora_weights(repo, adapter_name=adapter_name, **where)

def fuse_lora(pipe: Any, source: str | dict[str, torch.Tensor], adapter_name: str) -> None:
    """Load a LoRA and fuse it into the weights (no per-step cost), as the LCM-LoRA is."""
    load_lora(pipe, source, adapter_name)
    pipe.fuse_lora(adapter_names=[adapter_name])
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter layers

class Loras:
    """The user's LoRAs (`--lora`): peft adapters with their weights and a live `lora_scale`
    parameter, or fused into the weights (`--fuse-loras`: fastest, no live scale)."""

    def __init__(self, pipe: Any, specs: tuple[str, ...], *, fuse: bool) -> None:
        self.pipe = pipe
        self.specs = [LoraSpec.parse(spec) for spec in specs]
        self.names = [f"lora_{i}" for i in range(len(self.specs))]
        self.live = bool(self.specs) and not fuse
        self._scale: float | None = None
        for name, spec in zip(self.names, self.specs):
            log.info("Loading LoRA %s (weight %g)", spec.source, spec.weight)
            load_lora(pipe, spec.source, name)
        if self.specs:
            pipe.set_adapters(self.names, [spec.weight for spec in self.specs])
        if self.specs and fuse:
            pipe.fuse_lora(adapter_names=self.names)
            pipe.unload_lora_weights()

    def params_type(self, base: type[ParamsModel]) -> type[ParamsModel]:
        """`base`, plus a `lora_scale` parameter when LoRAs are live adapters."""
        if not self.live:
            return base
        from pydantic import create_model

        return create_model(
            base.__name__, __base__=base,
            lora_scale=(float, range_field(1.0, 0.0, 2.0, 0.01, "LoRA scale", description="Multiplies every --lora weight")),
        )

    def apply(self, params: ParamsModel) -> None:
        if self.live and params.lora_scale != self._scale:  # type: ignore[attr-defined]
            self._scale = params.lora_scale  # type: ignore[attr-defined]
            self.pipe.set_adapters(self.names, [spec.weight * self._scale for spec in self.specs])
