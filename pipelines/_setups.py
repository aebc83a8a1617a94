"""Model set-ups as a few orthogonal choices, and the anchor's 27 modules as named set-ups.

A set-up is a base model (a family: SD 1.5, SD 2.1 or SDXL), an accelerator that makes it fast (an
LCM-distilled UNet, a LoRA such as LCM-LoRA, Hyper-SD, PCM or Flash, SDXL-Lightning's UNet, or a
model distilled already, Turbo), the scheduler that accelerator was trained for (or another one),
and ControlNets, each with its annotator. The accelerator brings its sane steps, guidance and
strength; a named set-up may set its own defaults on top (the anchor's, so that a user of its
`controlnetSDTurbo` finds the same knobs where they left them).

Everything here is data: checking that the choices fit together happens before any download
(`SetUp.check`), and pipelines/_composed.py builds the pipeline from a set-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pipelines._base import ModelMismatch

Family = Literal["sd15", "sd21", "sdxl"]
FAMILY_TITLES: dict[str, str] = {"sd15": "SD 1.5", "sd21": "SD 2.1", "sdxl": "SDXL"}
SchedulerName = Literal["lcm", "tcd", "euler", "euler_a", "ddim"]
SCHEDULERS: tuple[str, ...] = ("lcm", "tcd", "euler", "euler_a", "ddim")


class SetUpError(ModelMismatch):
    """Choices that cannot work together (an SDXL ControlNet on an SD 1.5 base, a LoRA of the wrong
    family); raised before anything is downloaded."""


@dataclass(frozen=True)
class Base:
    family: Family
    model_id: str
    title: str
    size: int  # default width and height
    lcm_distilled: bool = False  # an LCM-distilled UNet: takes guidance as an embedding
    distilled: bool = False  # draws in a step or few without an accelerator (SD-Turbo, SDXL-Turbo, SDXS)
    own_vae: bool = False  # SDXS: its own tiny autoencoder, kept instead of TAESD


BASES: dict[str, Base] = {
    "lcm-dreamshaper": Base("sd15", "SimianLuo/LCM_Dreamshaper_v7", "LCM Dreamshaper v7", 512, lcm_distilled=True),
    "sd15": Base("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion 1.5", 512),
    "sd21": Base("sd21", "stabilityai/stable-diffusion-2-1-base", "Stable Diffusion 2.1 base", 512),
    "sd-turbo": Base("sd21", "stabilityai/sd-turbo", "SD-Turbo", 512, distilled=True),
    "sdxs": Base("sd21", "IDKiro/sdxs-512-0.9", "SDXS-512", 512, distilled=True, own_vae=True),
    "sdxl": Base("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "SDXL 1.0", 1024),
    "sdxl-turbo": Base("sdxl", "stabilityai/sdxl-turbo", "SDXL-Turbo", 512, distilled=True),
    "vega": Base("sdxl", "segmind/Segmind-Vega", "Segmind Vega", 1024),
}


@dataclass(frozen=True)
class Accelerator:
    title: str
    scheduler: SchedulerName
    steps: int
    guidance: float
    strength: float = 0.5
    eta: float | None = None  # TCD's gamma: 0 deterministic, 1 the most fresh noise a step
    # Per family: a LoRA fused into the weights, or a UNet file replacing the base's (Lightning). A hub
    # file is "owner/repo/path/in/repo.safetensors"; "{steps}" is filled with the variant.
    loras: dict[str, str] = field(default_factory=dict)
    unets: dict[str, str] = field(default_factory=dict)
    variants: tuple[int, ...] = ()  # step counts with their own weights (PCM, Lightning); the first is the default
    needs: Literal["lcm", "distilled"] | None = None  # the kind of base it needs
    bases: tuple[str, ...] = ()  # the only bases it fits (VegaRT: Vega), when not every base of its families
    max_steps: int = 15
    max_guidance: float = 2.0

    @property
    def families(self) -> tuple[str, ...]:
        if self.needs is not None:
            return tuple(FAMILY_TITLES)
        return tuple(self.loras or self.unets or FAMILY_TITLES)


ACCELERATORS: dict[str, Accelerator] = {
    "lcm": Accelerator("LCM-distilled UNet", "lcm", 4, 0.2, needs="lcm"),
    "lcm-lora": Accelerator(
        "LCM-LoRA", "lcm", 4, 1.0,
        loras={"sd15": "latent-consistency/lcm-lora-sdv1-5", "sdxl": "latent-consistency/lcm-lora-sdxl"},
    ),
    "hyper": Accelerator(
        "Hyper-SD (1-step LoRA, TCD)", "tcd", 2, 0.0, eta=1.0,
        loras={"sd15": "ByteDance/Hyper-SD/Hyper-SD15-1step-lora.safetensors",
               "sdxl": "ByteDance/Hyper-SD/Hyper-SDXL-1step-lora.safetensors"},
    ),
    "pcm": Accelerator(
        "PCM (phased consistency LoRA, TCD)", "tcd", 4, 0.0, eta=0.0, variants=(4, 2, 8, 16), max_steps=16,
        loras={"sd15": "wangfuyun/PCM_Weights/sd15/pcm_sd15_smallcfg_{steps}step_converted.safetensors",
               "sdxl": "wangfuyun/PCM_Weights/sdxl/pcm_sdxl_smallcfg_{steps}step_converted.safetensors"},
    ),
    "flash": Accelerator(
        "Flash Diffusion LoRA", "lcm", 2, 0.0, loras={"sd15": "jasperai/flash-sd", "sdxl": "jasperai/flash-sdxl"}
    ),
    "lightning": Accelerator(
        "SDXL-Lightning UNet", "euler", 2, 0.0, variants=(2, 4, 8), max_steps=8,
        unets={"sdxl": "ByteDance/SDXL-Lightning/sdxl_lightning_{steps}step_unet.safetensors"},
    ),
    "vegart": Accelerator("VegaRT (LCM-LoRA for Vega)", "lcm", 2, 0.0, loras={"sdxl": "segmind/Segmind-VegaRT"}, bases=("vega",)),
    "turbo": Accelerator("its own few-step distillation", "euler", 1, 0.0, needs="distilled", max_steps=10),
    "none": Accelerator("none: the base model's own pace, classifier-free guidance", "euler", 15, 5.0,
                        max_steps=50, max_guidance=15.0, strength=0.6),
}


@dataclass(frozen=True)
class ControlNetKind:
    title: str
    models: dict[str, str]  # per family: hub id (a subfolder after a third slash)
    annotator: Literal["canny", "depth", "lineart", "frame"]
    scale: float = 0.8


CONTROLNETS: dict[str, ControlNetKind] = {
    "canny": ControlNetKind("Canny edges", {
        "sd15": "lllyasviel/control_v11p_sd15_canny",
        "sd21": "thibaud/controlnet-sd21-canny-diffusers",
        "sdxl": "diffusers/controlnet-canny-sdxl-1.0",
    }, "canny"),
    "depth": ControlNetKind("Depth", {
        "sd15": "lllyasviel/control_v11f1p_sd15_depth",
        "sd21": "thibaud/controlnet-sd21-depth-diffusers",
        "sdxl": "diffusers/controlnet-depth-sdxl-1.0",
    }, "depth", scale=0.5),
    "lineart": ControlNetKind("Line art", {
        "sd15": "lllyasviel/control_v11p_sd15_lineart",
        "sdxl": "TheMistoAI/MistoLine",
    }, "lineart", scale=0.5),
    "qr": ControlNetKind("QR-code monster (the frame itself is the control)", {
        "sd15": "monster-labs/control_v1p_sd15_qrcode_monster/v2",
        "sdxl": "monster-labs/control_v1p_sdxl_qrcode_monster",
    }, "frame", scale=1.0),
}

# The depth annotators the anchor pairs with each family's depth ControlNet.
DEPTH_MODELS: dict[str, str] = {
    "sd15": "LiheYoung/depth-anything-small-hf",
    "sd21": "LiheYoung/depth-anything-small-hf",
    "sdxl": "Intel/dpt-swinv2-base-384",
}

IP_ADAPTER_FAMILIES: dict[str, tuple[str, ...]] = {"plain": ("sd15", "sdxl"), "composition": ("sd15", "sdxl")}

TAESD_IDS: dict[str, str] = {"sd15": "madebyollin/taesd", "sd21": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}


@dataclass(frozen=True)
class SetUp:
    """One model set-up: what is loaded, how it is run, and its parameters' defaults."""

    base: str
    accelerator: str
    scheduler: SchedulerName | None = None  # None: the accelerator's
    variant: int | None = None  # the accelerator's step variant (PCM, Lightning); None: its first
    controlnets: tuple[str, ...] = ()
    text_to_image: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)  # parameter defaults over the accelerator's
    title: str = ""
    model_id: str = ""  # the base's model instead of its usual one (the anchor's fine-tunes)
    ip_adapter: Literal["plain", "composition"] | None = None  # an image prompt beside the text

    @property
    def family(self) -> Family:
        return BASES[self.base].family

    @property
    def scheduler_name(self) -> SchedulerName:
        return self.scheduler or ACCELERATORS[self.accelerator].scheduler

    @property
    def steps_variant(self) -> int | None:
        variants = ACCELERATORS[self.accelerator].variants
        return self.variant if self.variant is not None else (variants[0] if variants else None)

    def check(self) -> SetUp:
        """The set-up itself, or SetUpError saying which choice does not fit and what would."""
        if self.base not in BASES:
            raise SetUpError(f"Unknown base {self.base!r}. Bases: {', '.join(BASES)}")
        if self.accelerator not in ACCELERATORS:
            raise SetUpError(f"Unknown accelerator {self.accelerator!r}. Accelerators: {', '.join(ACCELERATORS)}")
        base, accelerator, family = BASES[self.base], ACCELERATORS[self.accelerator], self.family
        fitting = [name for name in ACCELERATORS if _fits(name, self.base)]
        if not _fits(self.accelerator, self.base):
            raise SetUpError(
                f"Accelerator {self.accelerator!r} ({accelerator.title}) does not fit base {self.base!r} "
                f"({base.title}, {FAMILY_TITLES[family]}). For this base: {', '.join(fitting)}"
            )
        if self.variant is not None and self.variant not in accelerator.variants:
            choices = ", ".join(map(str, accelerator.variants)) or "none"
            raise SetUpError(f"Accelerator {self.accelerator!r} has no {self.variant}-step weights (variants: {choices})")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise SetUpError(f"Unknown scheduler {self.scheduler!r}. Schedulers: {', '.join(SCHEDULERS)}")
        if len(set(self.controlnets)) != len(self.controlnets):
            raise SetUpError(f"A ControlNet is named twice in {','.join(self.controlnets)}")
        for kind in self.controlnets:
            if kind not in CONTROLNETS:
                raise SetUpError(f"Unknown ControlNet {kind!r}. ControlNets: {', '.join(CONTROLNETS)}")
            if family not in CONTROLNETS[kind].models:
                made_for = ", ".join(FAMILY_TITLES[f] for f in CONTROLNETS[kind].models)
                raise SetUpError(
                    f"There is no {kind} ControlNet for {FAMILY_TITLES[family]} (base {self.base!r}); it exists for {made_for}"
                )
        if self.controlnets and self.text_to_image:
            raise SetUpError("ControlNets steer image to image: a text-to-image set-up has no frame to take them from")
        if self.ip_adapter is not None:
            if self.ip_adapter not in IP_ADAPTER_FAMILIES:
                raise SetUpError(f"Unknown IP-Adapter {self.ip_adapter!r}. IP-Adapters: {', '.join(IP_ADAPTER_FAMILIES)}")
            if family not in IP_ADAPTER_FAMILIES[self.ip_adapter]:
                raise SetUpError(f"There is no {self.ip_adapter} IP-Adapter for {FAMILY_TITLES[family]} (base {self.base!r}); "
                                 "it exists for SD 1.5 and SDXL")
            if self.text_to_image:
                raise SetUpError("An IP-Adapter here takes the camera frame when no image prompt was sent: "
                                 "it needs an image-to-image set-up")
        return self

    def with_choices(self, *, base: str | None = None, accelerator: str | None = None, scheduler: str | None = None,
                     controlnets: tuple[str, ...] | None = None, ip_adapter: str | None = None) -> SetUp:
        """This set-up with some choices replaced (the server's --base, --accelerator, ... flags). A new
        base drops the set-up's own model; a new base or accelerator drops the parameter defaults that
        were the old accelerator's."""
        accelerator_name, variant = (accelerator.partition(":")[::2]) if accelerator else (None, "")
        changes: dict[str, Any] = {}
        if base is not None and base != self.base:
            changes |= {"base": base, "model_id": "", "defaults": {}}
        if accelerator_name is not None:
            try:
                changes |= {"accelerator": accelerator_name, "variant": int(variant) if variant else None}
            except ValueError:
                raise SetUpError(f"--accelerator {accelerator!r}: the part after ':' is a step count, such as pcm:8") from None
            if accelerator_name != self.accelerator:
                changes["defaults"] = {}
        elif base is not None and base != self.base:
            changes["accelerator"] = natural_accelerator(base)
        if scheduler is not None:
            changes["scheduler"] = scheduler
        if controlnets is not None:
            changes["controlnets"] = controlnets
        if ip_adapter is not None:
            changes["ip_adapter"] = None if ip_adapter == "none" else ip_adapter
        if not changes:
            return self
        return replace(self, title="", **changes)

    def describe(self) -> str:
        """A line saying what is loaded: "SDXL 1.0 + Hyper-SD (1-step LoRA, TCD), ControlNet depth"."""
        base = BASES[self.base]
        parts = [f"{self.model_id} ({FAMILY_TITLES[base.family]})" if self.model_id else base.title,
                 ACCELERATORS[self.accelerator].title]
        if self.steps_variant:
            parts[1] += f" ({self.steps_variant} steps)"
        text = " + ".join(parts)
        if self.scheduler and self.scheduler != ACCELERATORS[self.accelerator].scheduler:
            text += f", {self.scheduler} scheduler"
        if self.controlnets:
            text += ", ControlNet " + " + ".join(self.controlnets)
        if self.ip_adapter:
            text += f", {self.ip_adapter} IP-Adapter"
        return text + (", text to image" if self.text_to_image else "")


def _fits(accelerator_name: str, base_name: str) -> bool:
    accelerator, base = ACCELERATORS[accelerator_name], BASES[base_name]
    if accelerator.needs == "lcm":
        return base.lcm_distilled
    if accelerator.needs == "distilled":
        return base.distilled
    if base.lcm_distilled or base.distilled:  # a distilled model wants no second distillation (or 'none')
        return accelerator_name == "none"
    if accelerator.bases:
        return base_name in accelerator.bases
    return base.family in accelerator.families


def natural_accelerator(base_name: str) -> str:
    """The accelerator a base is run with when none is named."""
    base = BASES[base_name]
    if base.lcm_distilled:
        return "lcm"
    if base.distilled:
        return "turbo"
    if base_name == "vega":
        return "vegart"
    return "lcm-lora" if base.family in ACCELERATORS["lcm-lora"].loras else "none"


@dataclass(frozen=True)
class Choices:
    """The server's --base, --accelerator, --scheduler and --controlnet: a set-up of their own, or
    changes to a named one. None: not chosen."""

    base: str | None = None
    accelerator: str | None = None  # NAME or NAME:STEPS (pcm:8)
    scheduler: str | None = None
    controlnets: tuple[str, ...] | None = None
    ip_adapter: str | None = None  # plain, composition, or none

    def apply(self, set_up: SetUp) -> SetUp:
        return set_up.with_choices(base=self.base, accelerator=self.accelerator, scheduler=self.scheduler,
                                   controlnets=self.controlnets, ip_adapter=self.ip_adapter)

    def compose(self) -> SetUp:
        """A set-up from these choices alone: a missing base is the one the accelerator is made for
        (SD 1.5 for the LoRAs that exist for every family)."""
        base = self.base
        if base is None:
            accelerator = ACCELERATORS.get((self.accelerator or "").partition(":")[0])
            base = "sd15"
            if accelerator is not None and accelerator.needs == "lcm":
                base = "lcm-dreamshaper"
            elif accelerator is not None and accelerator.needs == "distilled":
                base = "sd-turbo"
            elif accelerator is not None and (accelerator.bases or "sd15" not in accelerator.families):
                base = accelerator.bases[0] if accelerator.bases else "sdxl"
        if base not in BASES:
            raise SetUpError(f"Unknown base {base!r}. Bases: {', '.join(BASES)}")
        return replace(self, base=None).apply(SetUp(base=base, accelerator=natural_accelerator(base)))


_TERMINATOR = (
    "Portrait of The Terminator with glare pose, detailed, intricate, full of colour, cinematic lighting, "
    "trending on artstation, 8k, hyperrealistic, focused, extreme details, unreal engine 5 cinematic, masterpiece"
)
_ANCHOR = {"prompt": _TERMINATOR, "negative_prompt": "blurry, low quality, render, 3D, oversaturated"}

# Real-Time-Latent-Consistency-Model's modules (../shared/reference/MODEL-SETUPS.md), by name, with the
# defaults its pages start with where they differ from the accelerator's.
ANCHORS: dict[str, SetUp] = {
    "txt2imgLora": SetUp("sd15", "lcm-lora", text_to_image=True, model_id="wavymulder/Analog-Diffusion",
                         defaults={**_ANCHOR, "guidance_scale": 1.0}),
    "controlnetLoraSD15": SetUp("sd15", "lcm-lora", controlnets=("canny",), model_id="nitrosocke/mo-di-diffusion",
                                defaults={**_ANCHOR, "steps": 2}),
    "controlnetLoraSD15QRCode": SetUp("sd15", "lcm-lora", controlnets=("qr",), model_id="nitrosocke/mo-di-diffusion",
                                      defaults={**_ANCHOR, "steps": 5, "strength": 0.6, "qr_scale": 1.0}),
    "controlnetSDTurbo": SetUp("sd-turbo", "turbo", controlnets=("canny",),
                               defaults={**_ANCHOR, "guidance_scale": 1.21, "strength": 0.8, "canny_scale": 0.325}),
    "controlnetHyperSD": SetUp("sd15", "hyper", controlnets=("canny",), defaults={**_ANCHOR, "canny_scale": 0.5}),
    "controlnetDepthHyperSD": SetUp("sd15", "hyper", controlnets=("depth",), defaults=_ANCHOR),
    "controlnetFlashSD": SetUp("sd15", "flash", controlnets=("canny",), defaults={**_ANCHOR, "canny_scale": 0.5}),
    "controlnetDepthFlashSD": SetUp("sd15", "flash", controlnets=("depth",), defaults=_ANCHOR),
    "controlnetPCMSD15": SetUp("sd15", "pcm", controlnets=("canny",), defaults=_ANCHOR),
    "controlnetLoraSDXL": SetUp("sdxl", "lcm-lora", controlnets=("canny",), defaults={**_ANCHOR, "canny_scale": 0.5}),
    "txt2imgLoraSDXL": SetUp("sdxl", "lcm-lora", text_to_image=True, defaults=_ANCHOR),
    "img2imgSDXL-Lightning": SetUp("sdxl", "lightning", defaults=_ANCHOR),
    "controlnetLoraSDXL-Lightning": SetUp("sdxl", "lightning", controlnets=("canny",),
                                          defaults={**_ANCHOR, "canny_scale": 0.5}),
    "controlnetHyperSDXL": SetUp("sdxl", "hyper", controlnets=("canny",), defaults={**_ANCHOR, "canny_scale": 0.5}),
    "controlnetDepthHyperSDXL": SetUp("sdxl", "hyper", controlnets=("depth",), defaults=_ANCHOR),
    "controlnetMistoLineHyperSDXL": SetUp("sdxl", "hyper", controlnets=("lineart",), defaults=_ANCHOR),
    "controlnetFlashSDXL": SetUp("sdxl", "flash", controlnets=("canny",), defaults={**_ANCHOR, "canny_scale": 0.5}),
    "img2imgSDXLTurbo": SetUp("sdxl-turbo", "turbo", defaults=_ANCHOR),
    "controlnetSDXLTurbo": SetUp("sdxl-turbo", "turbo", controlnets=("canny",),
                                 defaults={**_ANCHOR, "steps": 2, "canny_scale": 0.5}),
    "img2imgSegmindVegaRT": SetUp("vega", "vegart", defaults={**_ANCHOR, "steps": 1}),
    "controlnetSegmindVegaRT": SetUp("vega", "vegart", controlnets=("canny",), defaults={**_ANCHOR, "canny_scale": 0.5}),
    "img2imgSDXS512": SetUp("sdxs", "turbo", defaults=_ANCHOR),
    # The anchor draws these from noise with the camera as the composition; strength 1 comes closest.
    "IPcompositionHyperSD15": SetUp("sd15", "hyper", ip_adapter="composition", defaults={**_ANCHOR, "strength": 1.0}),
    "IPcompositionHyperSDXL": SetUp("sdxl", "hyper", ip_adapter="composition", defaults={**_ANCHOR, "strength": 1.0}),
}

# The anchor's modules that are pipeline modules here (same models; `img2img` and `txt2img` have the
# same names), by the anchor's name.
ANCHOR_MODULES: dict[str, str] = {
    "controlnet": "controlnet_canny", "img2imgSDTurbo": "img2img_sd_turbo", "pix2pixTurbo": "pix2pix_turbo",
}
