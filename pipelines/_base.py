"""The pipeline contract: what every module in `pipelines/` declares.

A pipeline module defines three names:

- `Info`: a `PipelineInfo` subclass whose field defaults say what the pipeline is.
- `InputParams`: a `ParamsModel` subclass, one field per control. Bounds are enforced by pydantic on
  the server; the JSON schema also carries the widget hints the web page reads (`field`, `id`,
  `min`, `max`, `step`, `hide`, `values`).
- `Pipeline`: built as `Pipeline(config, device, dtype)`, with `predict(params, image) -> image`.
  A model that cannot be loaded raises `ModelLoadError` (the message says why and what to do).
  A pipeline whose params have `temporal_consistency` (`temporal_field()`) keeps a memory per video
  stream: `new_memory()` makes one, and `predict(params, image, memory)` / `predict_batch(batch,
  images, memories)` take it with each frame.

The field helpers below keep the enforced bound and the widget hint in one place, so they can
never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    import torch
    from PIL import Image

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1


class ModelLoadError(RuntimeError):
    """A model that cannot be used; the message says why and what to do."""

class ModelUnavailable(ModelLoadError):
    """A model that is neither on disk nor downloadable."""

class ModelMismatch(ModelLoadError):
    """A model whose architecture does not fit the pipeline."""


class PipelineInfo(BaseModel):
    """What a pipeline is. Subclasses set the defaults; the schema is sent to the page as is."""

    name: str
    title: str
    description: str = ""
    input_mode: Literal["image", "text"] = "image"
    page_content: str = ""
    takes_image_prompt: bool = False  # an image prompt may be sent besides the frames (IP-Adapter set-ups)


def _add_widget_ids(schema: dict[str, Any]) -> None:
    # Real-Time-Latent-Consistency-Model's page looks widgets up by `id`, which is always the field name.
    for name, prop in schema.get("properties", {}).items():
        prop.setdefault("id", name)


class ParamsModel(BaseModel):
    """Base of every `InputParams`: unknown keys and out-of-range values are errors, never clamped."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_add_widget_ids)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for an int field; a client sending it has a bug worth hearing about.
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError("Input should be a number, not a boolean")
        # JSON may escape half a character ("\ud800"): no text encoder downstream can take it.
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("Input should be valid Unicode text") from None
        return value


def prompt_field(default: str, title: str = "Prompt", *, hide: bool = False, max_chars: int = MAX_PROMPT_CHARS) -> Any:
    return Field(
        default,
        title=title,
        max_length=max_chars,
        json_schema_extra={"field": "textarea", "hide": hide, "max_length": max_chars},
    )


def range_field(
    default: float,
    ge: float,
    le: float,
    step: float,
    title: str,
    *,
    hide: bool = False,
    description: str | None = None,
) -> Any:
    return Field(
        default,
        ge=ge,
        le=le,
        title=title,
        description=description,
        json_schema_extra={"field": "range", "min": ge, "max": le, "step": step, "hide": hide},
    )


def negative_prompt_field(default: str = "") -> Any:
    return prompt_field(default, "Negative prompt", hide=True)


def steps_field(default: int, *, le: int = 15) -> Any:
    return range_field(default, 1, le, 1, "Steps", hide=True)


CFG_GUIDANCE = "Fast models want 0 to 2; above 1 the negative prompt is used (a second UNet pass)"
# As in diffusers: an LCM-distilled UNet takes the scale as an embedding and runs no second pass.
LCM_GUIDANCE = (
    "LCM models take the scale as their guidance embedding, in one UNet pass, and ignore the negative prompt "
    "(a model with classifier-free guidance, such as one with an LCM-LoRA, uses it above 1)"
)


def guidance_field(default: float, description: str = CFG_GUIDANCE) -> Any:
    return range_field(default, 0.0, 2.0, 0.01, "Guidance scale", hide=True, description=description)


def strength_field(default: float = 0.5) -> Any:
    return range_field(default, 0.1, 1.0, 0.01, "Strength", description="How far the output may stray from the input")


def temporal_field() -> Any:
    """How much a video stream's frames carry over to the next (pipelines/_temporal.py): 0 frames are
    independent; 1 the least flicker."""
    return range_field(
        0.0, 0.0, 1.0, 0.01, "Temporal consistency",
        description="Less flicker between frames: 0 draws each frame on its own, 1 carries the most over from the last",
    )


def seed_field(default: int, *, hide: bool = False) -> Any:
    return Field(
        default,
        ge=0,
        le=MAX_SEED,
        title="Seed",
        json_schema_extra={"field": "seed", "min": 0, "max": MAX_SEED, "step": 1, "hide": hide},
    )


def size_field(default: int, title: str, *, ge: int = 256, le: int = 1024) -> Any:
    """Width or height in pixels: a multiple of 8 (the VAE's scale factor) within [ge, le]."""
    return Field(
        default,
        ge=ge,
        le=le,
        multiple_of=8,
        title=title,
        json_schema_extra={"field": "range", "min": ge, "max": le, "step": 8, "hide": True},
    )


def checkbox_field(default: bool, title: str, *, hide: bool = False) -> Any:
    return Field(default, title=title, json_schema_extra={"field": "checkbox", "hide": hide})


def select_field(default: str, values: list[str], title: str, *, hide: bool = False, description: str | None = None) -> Any:
    # Pair with a `Literal[...]` annotation so the server enforces the choice.
    return Field(default, title=title, description=description,
                 json_schema_extra={"field": "select", "values": values, "hide": hide})


# What may differ between the frames of one batch; every other parameter is shared by the batch.
PER_FRAME_PARAMS = frozenset({"prompt", "negative_prompt", "seed"})


def batch_key(params: ParamsModel) -> tuple[tuple[str, Any], ...]:
    """Frames (of one user or several) can run as one batch when their keys are equal."""
    return tuple((name, value) for name, value in params.model_dump().items() if name not in PER_FRAME_PARAMS)


class BatchPipeline:
    """Base of pipelines that run several frames as one batch: `predict_batch` does the work, for
    frames whose `batch_key` is equal; `predict` is a batch of one."""

    def predict(self, params: ParamsModel, image: Image.Image | None = None, memory: Any = None) -> Image.Image:
        """One frame; `memory` (from `new_memory()`, pipelines with temporal consistency) is its stream's."""
        if memory is None:
            return self.predict_batch([params], [image])[0]
        return self.predict_batch([params], [image], [memory])[0]  # type: ignore[call-arg]

    def predict_batch(self, batch: list[Any], images: list[Any]) -> list[Image.Image]:
        raise NotImplementedError


class Pipeline(Protocol):
    """What the server needs from a pipeline's `Pipeline` class; what more it can do is said by the
    optional capabilities below, which the server checks with `isinstance`."""

    InputParams: ClassVar[type[ParamsModel]]

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None: ...

    def predict(self, params: ParamsModel, image: Image.Image | None) -> Image.Image: ...


@runtime_checkable
class SupportsBatch(Protocol):
    """A pipeline that runs the frames of several users as one batch (those whose `batch_key` is equal)."""

    def predict_batch(self, batch: list[Any], images: list[Any]) -> list[Image.Image]: ...


@runtime_checkable
class SupportsStreamMemory(Protocol):
    """A pipeline with temporal consistency: it keeps a memory per video stream, made by `new_memory()`
    and passed with each of the stream's frames; `memory_bytes(params)` says what a stream's memory will
    hold at those parameters (at most `max_bytes`: a memory made or set with that cap holds less)."""

    def new_memory(self, max_bytes: int | None = None) -> Any: ...

    def memory_bytes(self, params: Any, max_bytes: int | None = None) -> int: ...

    def predict_batch(self, batch: list[Any], images: list[Any], memories: list[Any]) -> list[Image.Image]: ...


@runtime_checkable
class SupportsImagePrompt(Protocol):
    """A pipeline that may take an image prompt with each frame (an IP-Adapter): `image_prompts` gives
    one per frame (None: the pipeline's own choice). `takes_image_prompt` says whether it is loaded."""

    @property
    def takes_image_prompt(self) -> bool: ...

    def predict_batch(self, batch: list[Any], images: list[Any], memories: list[Any] | None = None,
                      image_prompts: list[Image.Image | None] | None = None) -> list[Image.Image]: ...


class ModelOptions(BaseModel):
    """How a pipeline loads and runs its models: the part of the server's configuration pipelines read."""

    model_config = ConfigDict(frozen=True)

    model_id: str = Field("", description="Hub id, local diffusers folder or single-file checkpoint; empty: the pipeline's default")
    model_config_id: str = Field(
        "", description="For a single-file checkpoint: hub id or diffusers folder with its configs; empty: diffusers' guess"
    )
    tiny: bool = Field(False, description="Miniature random models built in code: no download, output is noise")
    taesd: bool = Field(True, description="Tiny autoencoder (TAESD) instead of the full VAE")
    compel: bool = Field(True, description="compel prompt weighting, e.g. 'a (red)++ cat'")
    torch_compile: bool = Field(False, description="torch.compile the UNet and VAE at start-up")
    safety_checker: bool = Field(False, description="Blank out images the safety checker flags")
    loras: tuple[str, ...] = Field((), description="LoRAs to load: ID_OR_PATH[:WEIGHT] each")
    fuse_loras: bool = Field(False, description="Fuse the LoRAs into the weights (faster, no live lora_scale)")
    controlnet_id: str = Field("", description="ControlNet override: hub id or local folder")
    lcm_lora_id: str = Field(
        "", description="LCM-LoRA override for pipelines that fuse one: hub id, folder or file; 'none' for models distilled already"
    )
    controlnet_ids: tuple[tuple[str, str], ...] = Field(
        (), description="Set-ups: (kind, hub id or folder) for ControlNets loaded from elsewhere than their usual repository"
    )
    accelerator_id: str = Field("", description="Set-ups: the accelerator's LoRA or UNet from a hub id, folder or file")
    depth_model: str = Field("", description="Set-ups: the depth annotator (a transformers depth model: hub id or folder)")
    ip_adapter_id: str = Field("", description="Set-ups: the IP-Adapter from another file (local, or owner/repo/path in the hub)")
    image_encoder_id: str = Field("", description="Set-ups: the IP-Adapter's image encoder from another hub id or folder")
    pix2pix_weights: str = Field(
        "", description="pix2pix-turbo's weights (the published .pkl): a file, a URL or owner/repo/path in the hub; empty: the published edge_to_image file"
    )
