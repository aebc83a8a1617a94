"""The pipeline a set-up (pipelines/_setups.py) makes: its parameters, its page, and its models.

`setup_module(name, set_up)` gives what a module in pipelines/ declares (`Info`, `InputParams`,
`Pipeline`), so the server and the library load a set-up as they load a module. The frame loop is
the one every pipeline shares (pipelines/_pipeline.py, pipelines/_denoise.py); what a set-up adds is
loading (base, accelerator, scheduler, ControlNets) and, each frame, its ControlNets' annotations.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    MultiControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
    TCDScheduler,
    UNet2DConditionModel,
)
from PIL import Image
from pydantic import create_model, model_validator

from pipelines import _tiny as tiny
from pipelines._base import (
    CFG_GUIDANCE,
    LCM_GUIDANCE,
    ModelMismatch,
    ModelOptions,
    ModelUnavailable,
    ParamsModel,
    PipelineInfo,
    checkbox_field,
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
from pipelines._denoise import Control, placement
from pipelines._loading import (
    NO_SAFETY_CHECKER,
    SD_BETAS,
    build_pipeline,
    cast,
    hub_parts,
    is_local,
    load_model,
    model_file,
)
from pipelines._lora import fuse_lora
from pipelines._pipeline import DiffusersPipeline
from pipelines._setups import (
    ACCELERATORS,
    BASES,
    CONTROLNETS,
    DEPTH_MODELS,
    FAMILY_TITLES,
    TAESD_IDS,
    SetUp,
)

log = logging.getLogger(__name__)

FP16_VAE_ID = "madebyollin/sdxl-vae-fp16-fix"  # SDXL's own VAE overflows in float16
DEFAULT_PROMPT = "a cinematic portrait, dramatic light, film grain, highly detailed"
GUIDANCE_MODES = (
    "Above guidance 1: full runs the negative prompt through the UNet too (twice the work); self (StreamDiffusion's "
    "self-negative) takes the input's own noise in its place, initialize (one-time negative) the negative prompt's "
    "first-step estimate: each about the cost of no guidance"
)

SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
    "euler": (EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
    "euler_a": (EulerAncestralDiscreteScheduler, {"timestep_spacing": "trailing"}),
    "ddim": (DDIMScheduler, {"timestep_spacing": "trailing"}),
}


class SetUpParams(ParamsModel):
    """Base of a set-up's parameters: the orderings pydantic's bounds cannot say."""

    @model_validator(mode="after")
    def _ordered(self) -> SetUpParams:
        values = self.model_dump()
        if values.get("canny_low", 0) > values.get("canny_high", 255):
            raise ValueError(f"canny_low ({values['canny_low']}) must not exceed canny_high ({values['canny_high']})")
        for kind in CONTROLNETS:
            start, end = values.get(f"{kind}_start", 0.0), values.get(f"{kind}_end", 1.0)
            if start > end:
                raise ValueError(f"{kind}_start ({start}) must not exceed {kind}_end ({end})")
        return self


def params_model(name: str, set_up: SetUp) -> type[ParamsModel]:
    """The set-up's parameters: the accelerator's steps, guidance and strength (and TCD's eta), a scale
    and a window per ControlNet, with the set-up's own defaults over them."""
    accelerator, base = ACCELERATORS[set_up.accelerator], BASES[set_up.base]

    def default(key: str, value: Any) -> Any:
        return set_up.defaults.get(key, value)

    guidance_note = LCM_GUIDANCE if base.lcm_distilled else CFG_GUIDANCE
    fields: dict[str, tuple[Any, Any]] = {
        "prompt": (str, prompt_field(default("prompt", DEFAULT_PROMPT))),
        "negative_prompt": (str, negative_prompt_field(default("negative_prompt", ""))),
        "seed": (int, seed_field(default("seed", 2159232))),
        "steps": (int, steps_field(default("steps", set_up.steps_variant or accelerator.steps), le=accelerator.max_steps)),
        "guidance_scale": (float, range_field(default("guidance_scale", accelerator.guidance), 0.0, accelerator.max_guidance,
                                              0.01, "Guidance scale", hide=True, description=guidance_note)),
    }
    if not set_up.text_to_image:
        fields["strength"] = (float, strength_field(default("strength", accelerator.strength)))
    if set_up.scheduler_name == "tcd":
        eta = accelerator.eta if accelerator.eta is not None else 0.3  # TCDScheduler.step's own default
        fields["eta"] = (float, range_field(default("eta", eta), 0.0, 1.0, 0.01, "Eta (TCD)", hide=True,
                                            description="Fresh noise a step: 0 keeps the detail, 1 the least blur at one step"))
    if not set_up.text_to_image and not base.lcm_distilled:  # guidance above 1 runs CFG: offer its stand-ins
        fields["guidance_mode"] = (Literal["full", "self", "initialize"], select_field(
            default("guidance_mode", "full"), ["full", "self", "initialize"], "Guidance mode", hide=True,
            description=GUIDANCE_MODES))
        fields["residual_delta"] = (float, range_field(
            default("residual_delta", 1.0), 0.0, 1.0, 0.01, "Residual guidance delta", hide=True,
            description="How much of the residual noise stands for the negative prompt"))
    if not set_up.text_to_image:
        fields["temporal_consistency"] = (float, temporal_field())
    for kind in set_up.controlnets:
        title = CONTROLNETS[kind].title
        fields[f"{kind}_scale"] = (float, range_field(default(f"{kind}_scale", CONTROLNETS[kind].scale), 0.0, 2.0, 0.01,
                                                      f"{title} scale", description=f"How strongly the {kind} ControlNet holds"))
        fields[f"{kind}_start"] = (float, range_field(0.0, 0.0, 1.0, 0.01, f"{title} start", hide=True))
        fields[f"{kind}_end"] = (float, range_field(1.0, 0.0, 1.0, 0.01, f"{title} end", hide=True))
    if "canny" in set_up.controlnets:
        fields["canny_low"] = (int, range_field(100, 0, 255, 1, "Canny low threshold", hide=True))
        fields["canny_high"] = (int, range_field(200, 0, 255, 1, "Canny high threshold", hide=True))
    if set_up.ip_adapter:
        fields["ip_adapter_scale"] = (float, range_field(
            default("ip_adapter_scale", 0.8), 0.0, 1.5, 0.01, "Image prompt scale",
            description="How strongly the image prompt (or, without one, the camera frame) steers the picture"))
    if set_up.controlnets:
        fields["debug_control"] = (bool, checkbox_field(False, "Show the control image", hide=True))
    low = 512 if set_up.family == "sdxl" else 256
    fields["width"] = (int, size_field(default("width", base.size), "Width", ge=low))
    fields["height"] = (int, size_field(default("height", base.size), "Height", ge=low))
    # Defaults of parameters the set-up has not (another ControlNet chosen over a named set-up's) are dropped.
    return create_model(f"{_identifier(name)}Params", __base__=SetUpParams, **fields)  # type: ignore[call-overload]


def _identifier(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_") if part)


def info_model(name: str, set_up: SetUp) -> type[PipelineInfo]:
    title = set_up.title or set_up.describe()
    return create_model(  # type: ignore[call-overload]
        "Info", __base__=PipelineInfo,
        name=(str, name), title=(str, title), description=(str, set_up.describe()),
        input_mode=(str, "text" if set_up.text_to_image else "image"), page_content=(str, page_content(set_up)),
        takes_image_prompt=(bool, set_up.ip_adapter is not None),
    )


def page_content(set_up: SetUp) -> str:
    """The page's introduction: what is loaded, with links to the models."""
    base, accelerator = BASES[set_up.base], ACCELERATORS[set_up.accelerator]
    model = set_up.model_id or base.model_id
    lines = [f"# {set_up.describe()}", "", f"Base: [`{model}`](https://huggingface.co/{model}) ({FAMILY_TITLES[base.family]})."]
    lines.append(f"Made fast by {accelerator.title}; scheduler `{set_up.scheduler_name}`.")
    for kind in set_up.controlnets:
        repo, _ = hub_parts(CONTROLNETS[kind].models[set_up.family])
        lines.append(f"ControlNet {kind}: [`{repo}`](https://huggingface.co/{repo}), its scale below.")
    if set_up.ip_adapter:
        lines.append(f"An image prompt ({set_up.ip_adapter} IP-Adapter) steers it beside the text: drop a picture, or use "
                     "an output; without one, the camera frame is the image prompt.")
    if not set_up.text_to_image:
        lines.append("**Strength** sets how far the output may stray from the camera.")
    return "\n".join(lines) + "\n"


def setup_module(name: str, set_up: SetUp) -> types.ModuleType:
    """A module-like namespace with what a pipeline module in pipelines/ declares."""
    set_up.check()
    module = types.ModuleType(f"pipelines.{name}", f"The set-up {name!r}: {set_up.describe()}")
    module.SET_UP = set_up  # type: ignore[attr-defined]
    module.MODEL_ID = set_up.model_id or BASES[set_up.base].model_id  # type: ignore[attr-defined]
    module.Info = info_model(name, set_up)  # type: ignore[attr-defined]
    module.InputParams = params_model(name, set_up)  # type: ignore[attr-defined]
    module.Pipeline = type(  # type: ignore[attr-defined]
        "Pipeline", (SetUpPipeline,), {"set_up": set_up, "InputParams": module.InputParams, "__module__": module.__name__}
    )
    return module


def _pipeline_class(set_up: SetUp) -> Any:
    if set_up.family == "sdxl":
        return StableDiffusionXLControlNetImg2ImgPipeline if set_up.controlnets else StableDiffusionXLImg2ImgPipeline
    return StableDiffusionControlNetImg2ImgPipeline if set_up.controlnets else StableDiffusionImg2ImgPipeline


def _tiny_base(set_up: SetUp) -> dict[str, Any]:
    base = BASES[set_up.base]
    if base.family == "sdxl":
        components = tiny.tiny_sdxl()
    elif base.family == "sd21":
        components = tiny.tiny_sd21()
    else:
        components = tiny.tiny_sd15(lcm=base.lcm_distilled)
    if base.own_vae:
        components["vae"] = tiny.tiny_taesd(seed=1)
    return {**components, "scheduler": EulerDiscreteScheduler(**SD_BETAS)}


class SetUpPipeline(DiffusersPipeline):
    """A set-up's models, loaded in order: the base (with its ControlNets), the accelerator's UNet or
    LoRA, the scheduler, then what every pipeline shares (TAESD, the user's LoRAs, device, compile)."""

    set_up: ClassVar[SetUp]

    def __init__(self, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
        set_up, base = self.set_up, BASES[self.set_up.base]
        self.kinds = set_up.controlnets
        overrides = dict(config.controlnet_ids)
        if config.controlnet_id and len(self.kinds) == 1:
            overrides.setdefault(self.kinds[0], config.controlnet_id)
        controlnets = None
        if self.kinds and not config.tiny:
            controlnets = MultiControlNetModel([
                load_model(ControlNetModel, overrides.get(kind) or CONTROLNETS[kind].models[set_up.family], dtype)
                for kind in self.kinds
            ])
        extra = {} if set_up.family == "sdxl" else dict(NO_SAFETY_CHECKER)
        if self.kinds:
            extra["controlnet"] = controlnets
        own_model = {"model_id": set_up.model_id} if set_up.model_id and not config.model_id else {}
        model_options = config.model_copy(update=own_model)
        self.pipe = build_pipeline(
            _pipeline_class(set_up), model_options, base.model_id, dtype, tiny_components=self._tiny_components, **extra
        )
        if self.kinds:
            check_controlnets_fit(self.pipe, self.kinds)
        self._accelerate(config, dtype)
        scheduler, options = SCHEDULERS[set_up.scheduler_name]
        self.pipe.scheduler = scheduler.from_config(self.pipe.scheduler.config, **options)
        if set_up.family == "sdxl" and not config.taesd and dtype == torch.float16 and not config.tiny:
            self.pipe.vae = load_model(type(self.pipe.vae), FP16_VAE_ID, dtype)
        self.annotators = {kind: self._annotator(kind, config, device, dtype) for kind in self.kinds}
        self.image_prompts = None
        if set_up.ip_adapter is not None:  # before setup(): the temporal bank keeps the adapter's processors
            from pipelines._ip_adapter import ImagePrompts

            self.image_prompts = ImagePrompts(self.pipe, set_up.ip_adapter, set_up.family, config, dtype)
        taesd = config if not base.own_vae else config.model_copy(update={"taesd": False})
        tiny_taesd = tiny.tiny_taesdxl if set_up.family == "sdxl" else tiny.tiny_taesd
        self.setup(taesd, device, dtype, self.InputParams, taesd_id=TAESD_IDS[set_up.family], tiny_taesd=tiny_taesd,
                   sdxl=set_up.family == "sdxl")

    def _tiny_components(self) -> dict[str, Any]:
        components = _tiny_base(self.set_up)
        if self.kinds:
            components["controlnet"] = MultiControlNetModel(
                [tiny.tiny_controlnet(components["unet"], seed=i + 1) for i in range(len(self.kinds))]
            )
        return components

    def _accelerate(self, config: ModelOptions, dtype: torch.dtype) -> None:
        """The accelerator's weights: a UNet in place of the base's (Lightning), or a LoRA fused in."""
        accelerator, family = ACCELERATORS[self.set_up.accelerator], self.set_up.family
        steps = str(self.set_up.steps_variant or "")
        if family in accelerator.unets:
            if config.tiny:  # a UNet of the same architecture with other weights stands in for it
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(1)
                    unet = UNet2DConditionModel.from_config(self.pipe.unet.config)
                self.pipe.unet.load_state_dict(cast(unet, dtype).state_dict())
            else:
                load_unet_weights(self.pipe.unet, config.accelerator_id or accelerator.unets[family].format(steps=steps), dtype)
        elif family in accelerator.loras and self.set_up.base in (accelerator.bases or (self.set_up.base,)):
            if config.tiny:
                fuse_lora(self.pipe, tiny.tiny_lora(self.pipe.unet, seed=len(self.set_up.accelerator)), "accelerator")
            else:
                source = config.accelerator_id or accelerator.loras[family].format(steps=steps)
                log.info("Fusing the %s LoRA %s", self.set_up.accelerator, source)
                fuse_lora(self.pipe, source, "accelerator")

    def _annotator(self, kind: str, config: ModelOptions, device: torch.device, dtype: torch.dtype) -> Any:
        annotator = CONTROLNETS[kind].annotator
        if annotator == "depth":
            from pipelines._annotators import load_depth_estimator

            return load_depth_estimator(config.depth_model or DEPTH_MODELS[self.set_up.family], tiny=config.tiny,
                                        device=device, dtype=dtype)
        return annotator

    @property
    def takes_image_prompt(self) -> bool:
        """Whether frames may come with an image prompt (an IP-Adapter set-up)."""
        return self.image_prompts is not None

    @torch.inference_mode()
    def predict_batch(self, batch: list[Any], images: list[Image.Image | None], memories: list[Any] | None = None,
                      image_prompts: list[Image.Image | None] | None = None) -> list[Image.Image]:
        """`image_prompts`: each frame's image prompt (an IP-Adapter set-up; None: the frame is its own)."""
        shared = batch[0]
        frames = self.frames(shared, images)
        image_embeds = None
        if self.image_prompts is not None and frames is not None:
            self.image_prompts.set_scale(shared.ip_adapter_scale)
            prompts = image_prompts or [None] * len(frames)
            image_embeds = self.image_prompts.embeds([prompt or frame for prompt, frame in zip(prompts, frames)],
                                                     kept=[prompt is not None for prompt in prompts])
        controls = []
        if frames is not None and self.kinds:
            device, dtype = placement(self.pipe.unet)
            pixels = torch.from_numpy(np.stack([np.asarray(frame) for frame in frames])).to(device)
            pixels = pixels.permute(0, 3, 1, 2).float().div_(255)  # Nx3xHxW in [0, 1], as ControlNets take
            for kind in self.kinds:
                image = self.annotate(kind, frames, pixels, shared)
                controls.append(Control(
                    self.pipe.controlnet.nets[self.kinds.index(kind)], image.to(dtype),
                    getattr(shared, f"{kind}_scale"), getattr(shared, f"{kind}_start"), getattr(shared, f"{kind}_end"),
                ))
        outputs = self.generate(batch, frames, controls, memories, eta=getattr(shared, "eta", None), image_embeds=image_embeds)
        if controls and shared.debug_control:
            outputs = [with_inset(output, control) for output, control in zip(outputs, controls[0].image)]
        return outputs

    def annotate(self, kind: str, frames: list[Image.Image], pixels: torch.Tensor, params: Any) -> torch.Tensor:
        """The control images of a ControlNet for the batch: Nx3xHxW in [0, 1] on the frames' device."""
        annotator = self.annotators[kind]
        if annotator == "canny":
            edges = np.stack([cv2.Canny(np.asarray(frame), params.canny_low, params.canny_high) for frame in frames])
            return torch.from_numpy(edges).to(pixels.device)[:, None].expand(-1, 3, -1, -1).float() / 255
        if annotator == "frame":
            return pixels
        if annotator == "lineart":
            return line_art(pixels)
        return annotator(pixels)


def with_inset(output: Image.Image, control: torch.Tensor) -> Image.Image:
    """The control image at a quarter of the size, in the bottom-right corner."""
    array = control.float().mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    inset = Image.fromarray(array).resize((output.width // 4, output.height // 4))
    output.paste(inset, (output.width - inset.width, output.height - inset.height))
    return output


def line_art(pixels: torch.Tensor, sigma: float = 1.0, k: float = 1.6, gain: float = 12.0) -> torch.Tensor:
    """Line art of a batch (white lines on black, as line ControlNets such as MistoLine take): the
    difference of two Gaussian blurs of the luminance (XDoG's core), where it darkens, on the device."""
    luma = (pixels * torch.tensor([0.299, 0.587, 0.114], device=pixels.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    narrow, wide = _blur(luma, sigma), _blur(luma, sigma * k)
    lines = ((wide - narrow) * gain).clamp(0, 1)
    return lines.expand(-1, 3, -1, -1)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(image, (radius, radius, radius, radius), mode="replicate")
    rows = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1))


def check_controlnets_fit(pipe: Any, kinds: tuple[str, ...]) -> None:
    """Refuse, at start-up, a ControlNet made for another family than the UNet's."""
    unet = pipe.unet.config
    for kind, controlnet in zip(kinds, pipe.controlnet.nets):
        config = controlnet.config
        if config.cross_attention_dim != unet.cross_attention_dim or config.addition_embed_type != unet.addition_embed_type:
            made_for = "SDXL" if config.addition_embed_type == "text_time" else f"{config.cross_attention_dim}-wide text embeddings"
            raise ModelMismatch(
                f"The {kind} ControlNet does not fit this base: it was made for {made_for}, the base's UNet takes "
                f"{unet.cross_attention_dim}-wide embeddings{' with SDXL conditioning' if unet.addition_embed_type else ''}."
            )


def load_unet_weights(unet: Any, source: str, dtype: torch.dtype) -> None:
    """Replace a UNet's weights by a file's (SDXL-Lightning's): a .safetensors file, a diffusers UNet
    folder, or a file in a hub repository ("owner/repo/file.safetensors")."""
    from safetensors.torch import load_file

    path = Path(source).expanduser()
    if path.is_dir():
        state = UNet2DConditionModel.from_pretrained(str(path), dtype=dtype).state_dict()
    elif is_local(source) and not path.exists():
        raise ModelUnavailable(f"UNet {source!r}: no such file or folder")
    else:
        state = load_file(str(model_file(source, "UNet")))
    try:
        unet.load_state_dict({key: value.to(dtype) for key, value in state.items()})
    except RuntimeError as error:
        raise ModelMismatch(f"The UNet {source!r} does not fit this base model's UNet: {str(error)[:300]}") from None
