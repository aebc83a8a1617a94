"""Model-path benchmark: per-frame cost of the server's own predict path ("ours") against the sum of
the model forwards that frame needs ("floor") and a stock diffusers pipeline ("naive"), with
full-size architectures and random weights (bench/full_size.py: no download, no hub), for four of the
pipeline modules (`PIPELINES`) and every model set-up (pipelines/_setups.py).

    .venv/bin/python bench/model_path.py --dtype float32 --pipelines modules  # the modules: about 25 min on 2 cores
    .venv/bin/python bench/model_path.py --dtype float32 --pipelines controlnetHyperSD,txt2imgLora --sizes 256
    .venv/bin/python bench/model_path.py --device cuda                        # everything: every module and set-up
    .venv/bin/python bench/model_path.py --quick                              # miniature models, 1 frame, every case

The cases. `--pipelines` takes pipeline modules, set-up names, and the groups `modules`, `setups` and
`all` (the default). The modules have hand-written cases (`img2img`: 4 steps at strength 0.5, i.e. 2
UNet calls; `img2img_sd_turbo`: 1 step; `controlnet_canny`: 4 steps at strength 0.5, 2 ControlNet +
UNet calls; `pix2pix_turbo`: SD-Turbo with the pix2pix-turbo adapters, its Scharr edge map through the
full AutoencoderKL with the VAE skips, 1 UNet call at timestep 999, no strength). A set-up's case is
derived from its `SetUp` and its parameters' defaults (`setup_case`): the family's full-size models,
its steps, strength, guidance and TCD eta, text to image or not, its ControlNets; the anchor's names
that are another name of a module (`ANCHOR_MODULES`: `controlnet`, `img2imgSDTurbo`, `pix2pixTurbo`)
are measured as that module. For each case and size, every measured frame runs, in this order, on the
same camera-like input:

- ours: `Pipeline.predict(params, image)` of the real pipeline module or set-up, unchanged: crop,
  image to tensor, cached prompt embeddings, the annotators, the shared `denoise` loop with TAESD,
  tensor to PIL image. It is what the server's worker calls (the worker's JPEG encode is measured by
  bench/serving_path.py). Its annotators (the set-up's `annotate`: OpenCV Canny, the depth model,
  line art, the frame itself for QR; the canny module's `canny`; pix2pix-turbo's `scharr_edges`) are
  timed inside that call and shown as a column of their own, "annotators": the "ours" column is the
  call less them. pix2pix-turbo's path is its own (`pipelines._pix2pix.Pix2PixTurbo`): the full VAE
  with the skips, no TAESD, no `denoise` loop.
- floor: each model forward that frame of ours made (TAESD encoder, every UNet and ControlNet
  call, TAESD decoder), recorded with forward pre-hooks during ours and replayed one at a time on
  the very same inputs and modules (same dtype, memory format, compilation), timed separately and
  summed. ours/floor is the cost of everything around the models (the annotators are not in either).
  pix2pix-turbo runs its AutoencoderKL's encoder and decoder block by block (to carry the skips), so
  there the forwards recorded are those of their blocks, convolutions and norms and of the skips'
  convolutions (`vae_parts`), with the UNet's.
- naive: the common approach: the stock diffusers pipeline class for the case, called per frame with
  the prompt string (the text encoders run every frame) and the full AutoencoderKL (SDXS: its own
  small autoencoder, as diffusers would load it), the same scheduler class and config, steps, strength,
  guidance, TCD eta and dtype, and its own copies of the same-shaped UNet, ControlNets and text
  encoders in diffusers' default memory format: `StableDiffusion(XL)Img2ImgPipeline`,
  `StableDiffusion(XL)ControlNetImg2ImgPipeline` (set-ups: with a `MultiControlNetModel` of their
  ControlNets, as the set-up builds it), `StableDiffusion(XL)Pipeline` for text to image. It gets the
  control images ours' annotators made for that frame (so both run the same ControlNet inputs and
  neither's time holds the annotators), and its UNet has no adapter layers (as if the accelerator's
  LoRA were fused, as diffusers' LCM-LoRA and Hyper-SD instructions do). It makes the same number of
  UNet calls as ours (the table shows both counts): where ours runs one step at a strength diffusers
  refuses for one step (SD-Turbo's 1 step at 0.5), the stock pipeline gets the fewest steps that give
  the same calls (`pipelines._denoise.img2img_steps`: 2 steps at 0.5), as SD-Turbo's model card does.
  pix2pix-turbo has no stock diffusers pipeline: its naive (`StockPix2PixTurbo`) is the paper's own
  code's way, as the anchor's pix2pixTurbo runs it, on stock diffusers modules: the same adapters
  added with peft and left unfused (`unet.add_adapter`, `vae.add_adapter(..., adapter_name="vae_skip")`,
  their tensors copied into the state dicts), the text encoder on the prompt string every frame,
  `vae.encode(...).latent_dist.sample()`, the UNet at t=999, `DDPMScheduler.step` (timesteps [999]),
  and `vae.decode` with each skip added before its decoder block by a forward pre-hook (the encoder
  blocks' inputs kept by forward pre-hooks). It gets ours' edge map for the frame; deterministic (r = 1,
  the module's default), as ours.

How ours gets full-size models. With `tiny=True` a pipeline module or set-up builds its components by
calling the builders of `pipelines._tiny` (`tiny_sd15`, `tiny_sd21`, `tiny_sdxl`, `tiny_controlnet`,
`tiny_lora`, `tiny_taesd`, `tiny_taesdxl`) and its depth annotator through
`pipelines._annotators.tiny_depth_model`, looked up as module attributes when `Pipeline.__init__`
runs. The benchmark points those names at full-size builders for the duration of that one
constructor call, so the pipeline's own `__init__` runs unchanged on full-size models:
`build_pipeline` (the cast to the run dtype), the ControlNet stack, the accelerator's LoRA fused
(a full-size random one, `full_size.lora`), the scheduler, `swap_in_taesd`, `optimize` (device,
channels_last, torch.compile), the annotators and `PromptCache`, and `predict` is the real one.
SDXL-Lightning's UNet is, with `tiny=True`, a re-seeded UNet of the base's config: at full size one
more full-size UNet is built (and its weights copied in), which costs building time, not frame time.
pix2pix-turbo's adapters are, with `tiny=True`, `pipelines._pix2pix.tiny_weights` of the UNet and VAE
it was given: at full size they are full-size random adapters (rank 4, its list of target modules),
made on a deep copy of the full-size UNet and VAE (building time and memory, not frame time).
Nothing in server/ or pipelines/ is re-implemented here, so the benchmark follows the code as it
changes; re-running those setup steps by hand on a tiny pipeline would copy them and drift. After
construction the script checks that the pipeline really holds the full-size modules (UNet, TAESD or
pix2pix-turbo's full VAE, each ControlNet, the depth model) and stops with a message if it no longer
builds its miniature models through those names.

Sizes. A case that does not take a size (SDXL set-ups take 512 and up) runs at its smallest size
instead, once. Memory: on the CPU, a case whose models (ours and naive each hold a UNet, its
ControlNets and text encoders; counted on the meta device) would not fit in the memory available is
not built, and the output says so: an SDXL set-up with a ControlNet needs about 37 GB in float32 and
28 GB in bfloat16 (SDXL-Lightning's 10 GB more), more than the project's 23 GB machine has.

Times are wall-clock per frame: time.perf_counter on CPU; on CUDA, CUDA events around the call with
a synchronisation before and after. Each case and size gets one warm-up frame (it also fills the
prompt cache, as the server's warm-up and a user's first frame do) before `--frames` measured
frames (`--quick`: none, its figures are not judged); the table gives the median [min-max] over
those frames, and the ratios are taken frame by frame. The prompt is 75 characters or fewer, so with
the byte-level stand-in tokenizer the text embeddings are 77 tokens, as with the real CLIP tokenizer.

Run time on the project's 2-core CPU machine, default 3 frames + 1 warm-up, the first three modules at
512 and 256 (estimated from the component costs in shared/ENVIRONMENT.md and a partial run): about
12 min in float32 and about 7 min in bfloat16 (`--dtype auto` there), of which about 2 min builds the
random models; a frame more adds about 2 min (float32). pix2pix_turbo about as much again (its full
VAE: on one thread of a busy machine, 10 min at 256 with 5 frames, 18 min at 512 with 2). An SD 1.5
set-up with one ControlNet at 256, 2 frames: about 2 min in float32 on one thread (35 s of it
building), the IP-Adapter one about 5.
`--pipelines img2img --sizes 256 --frames 1` takes about 1.5 min; `--quick` (every case, miniature
models) about 1.5 min, `--quick --pipelines modules` about 12 s. Peak memory about 12 GB (float32,
SD 1.5 with a ControlNet: ours and naive each hold a UNet and a ControlNet; the IP-Adapter set-up 14,
pix2pix_turbo 14 while it builds).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import inspect
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/model_path.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from bench import report  # noqa: E402

PIPELINES = ("img2img", "img2img_sd_turbo", "controlnet_canny", "pix2pix_turbo")  # the modules with full-size builders
GROUPS = ("all", "modules", "setups")
SIZES = (512, 256)
DEFAULT_FRAMES = 3
# At most 75 characters: one token per character with the stand-in tokenizer, padded to 77 like CLIP's.
PROMPT = "a watercolour painting of a red fox in a misty forest, soft light, detailed"
TARGET_OURS_OVER_FLOOR = 1.10
TARGET_NAIVE_OVER_OURS = 2.0
TARGET_NAIVE_OVER_OURS_EVERY_CASE = 1.0  # ours at least as fast as the stock pipeline, every case
FAMILY_ORDER = ("sd15", "sd21", "sdxl")
MEMORY_MARGIN_BYTES = 2 * 2**30  # activations, the annotators, Python: beside the weights


@dataclass(frozen=True)
class Case:
    """A pipeline module or a set-up: what one frame of it runs, and what the stock pipeline is called with."""

    name: str
    family: str  # "sd15" (LCM Dreamshaper v7 for the modules), "sd21" (sd-turbo) or "sdxl" (SDXL base)
    steps: int
    strength: float  # 1.0 for text to image and pix2pix-turbo (neither takes one)
    naive_steps: int  # num_inference_steps giving the stock pipeline the same number of UNet calls
    controlnet: bool = False  # the canny module's ControlNet (a set-up's are in set_up.controlnets)
    annotator: str | None = None  # a module's module-level annotator function, timed apart ("canny")
    set_up: Any = None  # a model set-up's SetUp (pipelines/_setups.py); None: a pipeline module
    lcm: bool = True  # an SD 1.5 UNet with the LCM guidance embedding (LCM Dreamshaper v7)
    # pix2pix-turbo: its edge map through the full VAE with skips, one UNet call at t=999; no steps,
    # strength or guidance to set, and no stock diffusers pipeline (its naive is StockPix2PixTurbo)
    pix2pix: bool = False

    @property
    def kinds(self) -> tuple[str, ...]:
        """The ControlNets, in the order the pipeline stacks them."""
        if self.set_up is not None:
            return tuple(self.set_up.controlnets)
        return ("canny",) if self.controlnet else ()

    @property
    def text_to_image(self) -> bool:
        return self.set_up is not None and self.set_up.text_to_image

    @property
    def ip_adapter(self) -> str | None:
        """The set-up's IP-Adapter kind (an image prompt beside the text), if it has one."""
        return getattr(self.set_up, "ip_adapter", None)

    @property
    def own_vae(self) -> bool:
        """A base with its own small autoencoder instead of the full one (SDXS)."""
        from pipelines._setups import BASES

        return self.set_up is not None and BASES[self.set_up.base].own_vae


CASES = {
    "img2img": Case("img2img", "sd15", steps=4, strength=0.5, naive_steps=4),
    "img2img_sd_turbo": Case("img2img_sd_turbo", "sd21", steps=1, strength=0.5, naive_steps=2),
    "controlnet_canny": Case("controlnet_canny", "sd15", steps=4, strength=0.5, naive_steps=4, controlnet=True,
                             annotator="canny"),
    "pix2pix_turbo": Case("pix2pix_turbo", "sd21", steps=1, strength=1.0, naive_steps=1, annotator="scharr_edges",
                          pix2pix=True),
}


def setup_names() -> list[str]:
    """The set-ups measured: every one of `pipelines.setups()` but the other names of modules (measured
    as those modules), SD 1.5 first, SDXL (the dearest) last."""
    import pipelines
    from pipelines._setups import ANCHOR_MODULES, ANCHORS

    names = [name for name in pipelines.setups() if name not in ANCHOR_MODULES]
    return sorted(names, key=lambda name: FAMILY_ORDER.index(ANCHORS[name].family))


def resolve_names(requested: list[str]) -> tuple[list[str], list[str]]:
    """(case names, unknown names) for --pipelines: modules, set-ups, the anchor's other names of
    modules (as the module), and the groups all, modules and setups."""
    from pipelines._setups import ANCHOR_MODULES

    setups = setup_names()
    names: list[str] = []
    unknown: list[str] = []
    for name in requested:
        if name == "all":
            names += [*PIPELINES, *setups]
        elif name == "modules":
            names += PIPELINES
        elif name == "setups":
            names += setups
        elif ANCHOR_MODULES.get(name, name) in CASES:
            names.append(ANCHOR_MODULES.get(name, name))
        elif name in setups:
            names.append(name)
        else:
            unknown.append(name)
    return list(dict.fromkeys(names)), unknown


def setup_case(name: str) -> Case:
    """A set-up's case, from its SetUp and its parameters' defaults: its family, steps and strength (text
    to image: none), and the steps that give the stock pipeline as many UNet calls (diffusers runs
    int(n * strength) of n steps; ours at least one)."""
    import pipelines
    from pipelines._denoise import img2img_steps
    from pipelines._setups import BASES

    module = pipelines.load_module(name)
    set_up, defaults = module.SET_UP, module.InputParams()
    strength = 1.0 if set_up.text_to_image else defaults.strength
    naive_steps = defaults.steps if set_up.text_to_image else img2img_steps(defaults.steps, strength)
    return Case(name, set_up.family, defaults.steps, strength, naive_steps, set_up=set_up,
                lcm=BASES[set_up.base].lcm_distilled)


def case_for(name: str) -> Case:
    """The case of a module (its hand-written one) or of a set-up (derived from its data)."""
    from pipelines._setups import ANCHOR_MODULES

    name = ANCHOR_MODULES.get(name, name)
    return CASES[name] if name in CASES else setup_case(name)


# --- components -----------------------------------------------------------------------------------


def build_components(case: Case, full: bool, device: Any = None) -> dict[str, Any]:
    """Fresh unet, vae (AutoencoderKL; SDXS: its own small one), text_encoder, tokenizer, taesd and
    controlnets (one per ControlNet of the case, made from the UNet); SDXL (family "sdxl") also
    text_encoder_2 and tokenizer_2, and TAESDXL as taesd; an IP-Adapter set-up also image_encoder and
    feature_extractor. With `device` (full size only), built on that device (`full_size.built_on`), or on
    the CPU if that fails."""
    from pipelines import _tiny as tiny

    if full and device is not None:
        from bench import full_size

        try:
            with full_size.built_on(device):
                return build_components(case, full)
        except Exception as error:  # noqa: BLE001  (any failure: the CPU build is the fallback)
            report.progress(f"model_path: building on {device} failed ({type(error).__name__}: {error}); "
                            "building on the CPU")
            gc.collect()
    builders: Any = tiny
    if full:
        from bench import full_size

        builders = full_size
    prefix = "" if full else "tiny_"

    def build(name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(builders, prefix + name)(*args, **kwargs)

    if case.family == "sdxl":
        components = build("sdxl")
        components["taesd"] = build("taesdxl")
    else:
        components = build("sd15", lcm=case.lcm) if case.family == "sd15" else build("sd21")
        components["taesd"] = build("taesd")
    if case.own_vae:  # its own small autoencoder, kept instead of TAESD (pipelines/_composed.py)
        components["vae"] = components["taesd"]
    components["controlnets"] = [build("controlnet", components["unet"], seed=i) for i in range(len(case.kinds))]
    if case.ip_adapter:
        from pipelines._ip_adapter import ADAPTERS

        encoder_source = ADAPTERS[case.ip_adapter][case.family][1]  # which encoder (ViT-H or ViT-bigG)
        encoder, processor = build("image_encoder", encoder_source) if full else build("image_encoder")
        components.update(image_encoder=encoder, feature_extractor=processor)
    return components


@contextlib.contextmanager
def full_size_builders(components: dict[str, Any]) -> Iterator[None]:
    """Point `pipelines._tiny`'s builders at `components`, and `pipelines._annotators`' depth model at the
    full-size one, while a pipeline module or set-up is constructed. The ControlNets are handed out in
    the order they are asked for (a set-up stacks them in the order of its `controlnets`); the depth
    models built are kept in components["depth_models"]. An IP-Adapter set-up gets the image encoder of
    `components`; its adapter (`tiny_ip_adapter`) is left as it is: its projections follow the UNet's and
    the encoder's sizes, so they are full-size here (its resampler stays miniature: see docs/benchmarks.md)."""
    from pipelines import _annotators as annotators
    from pipelines import _tiny as tiny

    keys = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    base = {key: components[key] for key in keys if key in components}
    controlnets = iter(components.get("controlnets", []))
    replacements = {
        "tiny_sd15": lambda *args, **kwargs: dict(base),
        "tiny_sd21": lambda *args, **kwargs: dict(base),
        "tiny_sdxl": lambda *args, **kwargs: dict(base),
        "tiny_taesd": lambda *args, **kwargs: components["taesd"],
        "tiny_taesdxl": lambda *args, **kwargs: components["taesd"],
        "tiny_controlnet": lambda *args, **kwargs: next(controlnets),
        # The accelerator's LoRA (LCM-LoRA, Hyper-SD, ...): one made for the full-size UNet.
        "tiny_lora": lambda unet, *args, **kwargs: _full_size_lora(unet),
    }
    if "image_encoder" in components:
        replacements["tiny_image_encoder"] = lambda *args, **kwargs: (components["image_encoder"],
                                                                      components["feature_extractor"])
    saved = {name: getattr(tiny, name) for name in replacements}
    saved_depth = annotators.tiny_depth_model
    try:
        for name, builder in replacements.items():
            setattr(tiny, name, builder)
        annotators.tiny_depth_model = lambda model_id, *args, **kwargs: _full_size_depth(model_id, components)
        yield
    finally:
        for name, builder in saved.items():
            setattr(tiny, name, builder)
        annotators.tiny_depth_model = saved_depth


def _full_size_lora(unet: Any) -> dict[str, Any]:
    from bench import full_size

    return full_size.lora(unet)


def _full_size_depth(model_id: str, components: dict[str, Any]) -> Any:
    from bench import full_size

    model = full_size.depth_model(model_id)
    components.setdefault("depth_models", []).append(model)
    return model


def _unwrapped(module: Any) -> Any:
    return getattr(module, "_orig_mod", module)  # torch.compile's wrapper


def build_ours(case: Case, components: dict[str, Any], full: bool, device: Any, dtype: Any, compile_: bool) -> Any:
    import pipelines
    from pipelines import ModelOptions

    module = pipelines.load_module(case.name)
    options = ModelOptions(tiny=True, torch_compile=compile_)
    if not full:
        return module.Pipeline(options, device, dtype)
    with full_size_builders(components):
        pipeline = module.Pipeline(options, device, dtype)
    check_full_size(case, pipeline, components)
    return pipeline


def controlnet_nets(pipe: Any) -> list[Any]:
    """The pipe's ControlNets: a MultiControlNetModel's nets, a single ControlNet, or none."""
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return []
    return list(getattr(controlnet, "nets", [controlnet]))


def check_full_size(case: Case, pipeline: Any, components: dict[str, Any]) -> None:
    """Stop with a message unless `pipeline` holds the full-size modules of `components`."""
    pipe = pipeline.pipe
    vae = components["vae"] if case.pix2pix else components["taesd"]  # pix2pix-turbo keeps the full VAE (its skips)
    expected = [("unet", pipe.unet, components["unet"]), ("vae", pipe.vae, vae)]
    nets = controlnet_nets(pipe) + [None] * (len(case.kinds) - len(controlnet_nets(pipe)))
    expected += [(f"{kind} ControlNet", net, full)
                 for kind, net, full in zip(case.kinds, nets, components["controlnets"])]
    if case.ip_adapter:
        expected.append(("image encoder", getattr(pipe, "image_encoder", None), components["image_encoder"]))
    depth_models = components.get("depth_models", [])
    for kind, annotator in getattr(pipeline, "annotators", {}).items():
        model = getattr(annotator, "model", None)  # a depth annotator's model (the others are functions)
        if model is not None:
            expected.append((f"{kind} annotator's model", model, next((m for m in depth_models if m is model), None)))
    for name, model, full_model in expected:
        if full_model is None or model is None or _unwrapped(model) is not full_model:
            where = f"set-up {case.name} (pipelines/_composed.py)" if case.set_up else f"pipelines/{case.name}.py"
            raise SystemExit(
                f"model_path: {where} did not take the full-size {name} through pipelines._tiny's builders "
                "(or pipelines._annotators.tiny_depth_model): its miniature models are built another way now: "
                "update build_ours() in bench/model_path.py."
            )


def host_memory_shortfall(case: Case, dtype: Any) -> str | None:
    """On the CPU, why the case's full-size models would not fit in the memory available now (None when
    they would): ours and naive each hold the weights in the run dtype, built in float32 first, and
    SDXL-Lightning's re-seeded UNet is one more float32 UNet while ours is built. The parameters are
    counted on the meta device (no memory, no time). pix2pix-turbo's `tiny_weights` deep-copies the UNet and
    the VAE while ours is built, and again while naive is."""
    import torch

    from pipelines._setups import ACCELERATORS

    available = _memory_available()
    if available is None:
        return None
    with torch.device("meta"):
        components = build_components(case, True)
    models = {id(model): model for model in components.values() if isinstance(model, torch.nn.Module)}
    models.update({id(net): net for net in components["controlnets"]})
    parameters = sum(p.numel() for model in models.values() for p in model.parameters())
    element = torch.empty((), dtype=dtype).element_size()
    needed = parameters * (element + 4) + MEMORY_MARGIN_BYTES
    if case.set_up is not None and case.family in ACCELERATORS[case.set_up.accelerator].unets:  # Lightning
        needed += sum(p.numel() for p in components["unet"].parameters()) * 4
    if case.pix2pix:
        needed += sum(p.numel() for model in (components["unet"], components["vae"]) for p in model.parameters()) * 4
    if needed <= available:
        return None
    return (f"needs about {needed / 2**30:.0f} GB of memory ({parameters / 1e9:.2f}B parameters, ours and naive, "
            f"{str(dtype).removeprefix('torch.')}), {available / 2**30:.0f} GB available")


def _memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def naive_class(case: Case) -> Any:
    """The stock diffusers pipeline class that does what the case does, the common way."""
    import diffusers

    xl = "XL" if case.family == "sdxl" else ""
    if case.text_to_image:
        return getattr(diffusers, f"StableDiffusion{xl}Pipeline")
    if case.kinds:
        return getattr(diffusers, f"StableDiffusion{xl}ControlNetImg2ImgPipeline")
    return getattr(diffusers, f"StableDiffusion{xl}Img2ImgPipeline")


def build_naive(case: Case, components: dict[str, Any], scheduler: Any, device: Any, dtype: Any) -> Any:
    import torch
    from diffusers import MultiControlNetModel

    if case.pix2pix:
        return StockPix2PixTurbo(components, scheduler, device, dtype)
    cls = naive_class(case)
    names = ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder")
    models = {name: torch.nn.Module.to(components[name], dtype=dtype) for name in names if name in components}
    if case.kinds:
        nets = [torch.nn.Module.to(net, dtype=dtype) for net in components["controlnets"]]
        # A set-up builds a MultiControlNetModel (of one ControlNet or more); the canny module one ControlNet.
        models["controlnet"] = MultiControlNetModel(nets) if case.set_up is not None else nets[0]
    others = {
        "tokenizer": components["tokenizer"],
        "tokenizer_2": components.get("tokenizer_2"),
        "scheduler": type(scheduler).from_config(scheduler.config),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    if case.ip_adapter:
        others["feature_extractor"] = components["feature_extractor"]
    accepted = inspect.signature(cls.__init__).parameters
    naive = cls(**{name: value for name, value in {**models, **others}.items() if name in accepted})
    if case.ip_adapter:  # an adapter of the same shapes as ours (pipelines/_ip_adapter.py), loaded diffusers' way
        from pipelines import _tiny as tiny

        adapter = tiny.tiny_ip_adapter(naive.unet, naive.image_encoder, composition=case.ip_adapter == "composition")
        naive.load_ip_adapter(adapter, subfolder=None, weight_name=None, image_encoder_folder=None)
    naive.to(device)
    naive.set_progress_bar_config(disable=True)
    return naive


class StockPix2PixTurbo:
    """pix2pix-turbo the way its paper's code runs it (and the anchor's pix2pixTurbo, which calls that code),
    on stock diffusers modules: the adapters added with peft and left unfused, their tensors copied into
    the state dicts; per frame the text encoder on the prompt string, `vae.encode`, one UNet call at t=999,
    `DDPMScheduler.step`, and `vae.decode` with the skips, which forward pre-hooks keep (the input of each
    encoder block) and add (before each decoder block). Deterministic: r = 1, the module's default."""

    def __init__(self, components: dict[str, Any], scheduler: Any, device: Any, dtype: Any) -> None:
        import torch
        from peft import LoraConfig

        from pipelines._pix2pix import TIMESTEP, tiny_weights

        unet, vae = components["unet"], components["vae"]
        # The weights ours was given: `tiny_weights` of same-shaped models, in the published layout.
        weights = tiny_weights(unet, vae)
        # The paper's skip convolutions, for SD's VAE (blocks 128, 256, 512, 512 wide): 512->512, 256->512,
        # 128->512, 128->256, from the input of encoder block 3, 2, 1, 0 to that of decoder block 0, 1, 2, 3.
        c = vae.config.block_out_channels
        for i, (inputs, outputs) in enumerate([(c[2], c[3]), (c[1], c[3]), (c[0], c[2]), (c[0], c[1])]):
            setattr(vae.decoder, f"skip_conv_{i + 1}", torch.nn.Conv2d(inputs, outputs, kernel_size=1, bias=False))
        unet.add_adapter(LoraConfig(r=weights["rank_unet"], init_lora_weights="gaussian",
                                    target_modules=weights["unet_lora_target_modules"]))
        vae.add_adapter(LoraConfig(r=weights["rank_vae"], init_lora_weights="gaussian",
                                   target_modules=weights["vae_lora_target_modules"]), adapter_name="vae_skip")
        for model, state in ((unet, weights["state_dict_unet"]), (vae, weights["state_dict_vae"])):
            full = model.state_dict()
            full.update(state)
            model.load_state_dict(full)
        self.unet, self.vae, self.text_encoder = (torch.nn.Module.to(model, device=device, dtype=dtype)
                                                  for model in (unet, vae, components["text_encoder"]))
        self.tokenizer = components["tokenizer"]
        self.scheduler = type(scheduler).from_config(scheduler.config)  # DDPMScheduler, as ours'
        self.scheduler.set_timesteps(timesteps=[TIMESTEP], device=device)  # one step, from 999 to the clean image
        self.timestep = TIMESTEP
        self.device, self.dtype = device, dtype
        self.skips: list[Any] = []
        for block in vae.encoder.down_blocks:
            block.register_forward_pre_hook(self._keep_skip)
        for i, block in enumerate(vae.decoder.up_blocks):
            block.register_forward_pre_hook(lambda module, args, i=i: self._add_skip(i, args))

    def _keep_skip(self, module: Any, args: tuple) -> None:
        self.skips.append(args[0])

    def _add_skip(self, i: int, args: tuple) -> tuple:
        skip_conv = getattr(self.vae.decoder, f"skip_conv_{i + 1}")
        return (args[0] + skip_conv(self.skips[-1 - i]), *args[1:])

    def __call__(self, edges: Any, prompt: str, seed: int) -> Any:
        """The image (PIL) for an edge map (1, 3, H, W) in [0, 1]."""
        import torch
        from PIL import Image

        with torch.no_grad():  # as diffusers' pipelines and the paper's inference scripts run
            ids = self.tokenizer(prompt, max_length=self.tokenizer.model_max_length, padding="max_length",
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            embeds = self.text_encoder(ids)[0]
            generator = torch.Generator(self.device).manual_seed(seed)
            self.skips.clear()
            posterior = self.vae.encode(edges.to(self.dtype)).latent_dist
            latents = posterior.sample(generator) * self.vae.config.scaling_factor
            prediction = self.unet(latents, self.timestep, encoder_hidden_states=embeds).sample
            clean = self.scheduler.step(prediction, self.timestep, latents, generator=generator).prev_sample
            image = self.vae.decode(clean / self.vae.config.scaling_factor).sample.clamp(-1, 1)
        pixels = image[0].float().add(1).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(pixels)


# --- one frame --------------------------------------------------------------------------------------


def camera_frame(seed: int, size: int) -> Any:
    """A camera-like RGB frame: gradients, a few shapes (edges for Canny) and sensor noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed + 1000)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / size, y * 255 / size, np.full_like(x, 96 + (seed * 37) % 128)], axis=-1).astype(float)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 10, size // 3, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    pixels = np.asarray(image, dtype=float) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def torch_setup(args: argparse.Namespace) -> tuple[Any, Any, Clock, dict[str, Any]]:
    """What a model benchmark runs on, from its --threads, --device and --dtype: the torch device and
    dtype, its `Clock`, and the environment record printed with every table."""
    import torch

    from pipelines._device import cpu_supports_bfloat16, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    env = report.environment(
        torch_threads=torch.get_num_threads(),
        cpu_bf16=cpu_supports_bfloat16(),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    )
    return device, dtype, Clock(device), env


class Clock:
    """Seconds taken by fn(): perf_counter on CPU; CUDA events and synchronisation on CUDA; perf_counter
    between two synchronisations on other accelerators (mps, xpu)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        backend = getattr(torch, device.type, None) if device.type not in ("cpu", "cuda") else None
        self.synchronize: Callable[[], None] | None = getattr(backend, "synchronize", None)

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        if self.cuda:
            cuda = self.torch.cuda
            cuda.synchronize()
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            cuda.synchronize()
            return result, start.elapsed_time(end) / 1000.0
        if self.synchronize:
            self.synchronize()
        started = time.perf_counter()
        result = fn()
        if self.synchronize:
            self.synchronize()
        return result, time.perf_counter() - started


class Recorder:
    """Records every forward call (module, args, kwargs) of the given modules, in call order; a role may
    name a list of modules (a ControlNet stack)."""

    def __init__(self, modules: dict[str, Any], keep_inputs: bool = True) -> None:
        self.modules = {role: module for role, module in modules.items() if module is not None}
        self.keep_inputs = keep_inputs
        self.calls: list[tuple[str, Any, tuple, dict]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> Recorder:
        for role, modules in self.modules.items():
            for module in modules if isinstance(modules, (list, tuple)) else [modules]:
                def hook(module: Any, args: tuple, kwargs: dict, role: str = role) -> None:
                    self.calls.append((role, module, args, kwargs) if self.keep_inputs else (role, None, (), {}))
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def count(self, role: str) -> int:
        return sum(1 for call in self.calls if call[0] == role)


def model_modules(case: Case, pipe: Any) -> dict[str, Any]:
    """The modules whose forwards make the floor: TAESD encoder and decoder, UNet, each ControlNet, and an
    IP-Adapter's image encoder (each camera frame is its own image prompt); pix2pix-turbo: its full VAE's
    encoder and decoder part by part (`vae_parts`), and the UNet."""
    if case.pix2pix:
        encoder, decoder = vae_parts(pipe.vae)
        return {"encoder": encoder, "unet": pipe.unet, "decoder": decoder}
    return {
        "image_encoder": getattr(pipe, "image_encoder", None),
        "encoder": getattr(pipe.vae, "encoder", None),
        "controlnet": controlnet_nets(pipe),
        "unet": pipe.unet,
        "decoder": getattr(pipe.vae, "decoder", None),
    }


def vae_parts(vae: Any) -> tuple[list[Any], list[Any]]:
    """The encoder's and the decoder's parts, for a VAE run block by block, as pix2pix-turbo runs it to
    carry its skips (`pipelines._pix2pix.encode_with_skips`, `decode_with_skips`), so the encoder's and
    the decoder's own forwards are never called: each one's children (its blocks one by one, the skips'
    convolutions among the decoder's) with quant_conv and post_quant_conv."""
    import torch

    def children(module: Any) -> list[Any]:
        return [block for child in module.children()
                for block in (child if isinstance(child, torch.nn.ModuleList) else [child])]

    encoder = [*children(vae.encoder), vae.quant_conv]
    decoder = [vae.post_quant_conv, *children(vae.decoder)]
    return [m for m in encoder if m is not None], [m for m in decoder if m is not None]


def replay(calls: list[tuple[str, Any, tuple, dict]], clock: Clock) -> list[tuple[str, float]]:
    import torch

    parts = []
    with torch.inference_mode():
        for role, module, args, kwargs in calls:
            _, seconds = clock(lambda: module(*args, **kwargs))
            parts.append((role, seconds))
    return parts


class Annotations:
    """The control images ours' annotators made for one frame, by ControlNet, and the seconds they took."""

    def __init__(self) -> None:
        self.images: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def add(self, kind: str, image: Any, seconds: float) -> None:
        self.images[kind] = image
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@contextlib.contextmanager
def annotators_timed(case: Case, ours: Any, clock: Clock) -> Iterator[Annotations]:
    """Times ours' annotators inside its predict and keeps what they made (for naive): a set-up's
    `annotate(kind, frames, pixels, params)`, wrapped on the instance; a module's module-level annotator
    (the canny module's `canny(image, low, high)`, pix2pix-turbo's `scharr_edges(images, low, high)`),
    wrapped in its module for the block, kept under its name."""
    annotations = Annotations()
    if not case.kinds and not case.annotator:
        yield annotations
        return
    if case.set_up is not None:
        annotate = ours.annotate

        def timed_annotate(kind: str, *args: Any) -> Any:
            image, seconds = clock(lambda: annotate(kind, *args))
            annotations.add(kind, image, seconds)
            return image

        ours.annotate = timed_annotate
        try:
            yield annotations
        finally:
            del ours.annotate  # the class's method again
        return
    module = sys.modules[type(ours).__module__]
    annotator = getattr(module, case.annotator)

    def timed_annotator(*args: Any) -> Any:
        image, seconds = clock(lambda: annotator(*args))
        annotations.add(case.annotator, image, seconds)
        return image

    setattr(module, case.annotator, timed_annotator)
    try:
        yield annotations
    finally:
        setattr(module, case.annotator, annotator)


def case_params(ours: Any, case: Case, size: int) -> Any:
    """The frame's parameters: the case's steps and strength (a set-up's are its defaults), the short
    prompt, the size; everything else the pipeline's defaults (pix2pix-turbo: deterministic)."""
    if case.pix2pix:  # no steps or strength: one UNet call at t=999
        return ours.InputParams(prompt=PROMPT, width=size, height=size)
    values: dict[str, Any] = {"prompt": PROMPT, "steps": case.steps, "width": size, "height": size}
    if not case.text_to_image:
        values["strength"] = case.strength
    return ours.InputParams(**values)


def smallest_size(params_type: Any) -> int:
    """The smallest width the pipeline takes (its `ge` bound)."""
    for bound in params_type.model_fields["width"].metadata:
        if getattr(bound, "ge", None) is not None:
            return int(bound.ge)
    return 0


def naive_frame(naive: Any, case: Case, params: Any, frame: Any, device: Any, annotations: Annotations) -> Any:
    import torch
    from PIL import Image

    if case.pix2pix:  # ours' edge map for the frame, as ControlNets get ours' control images
        return naive(annotations.images[case.annotator], PROMPT, params.seed)
    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": params.negative_prompt,
        "num_inference_steps": case.naive_steps,
        "guidance_scale": params.guidance_scale,
        "generator": torch.Generator(device=device).manual_seed(params.seed),
    }
    if "eta" in type(params).model_fields:  # TCD's gamma
        kwargs["eta"] = params.eta
    if case.text_to_image:
        kwargs.update(width=params.width, height=params.height)
    else:
        kwargs.update(image=frame, strength=params.strength)
    if case.set_up is not None and case.kinds:
        kinds = case.kinds
        kwargs.update(
            control_image=[annotations.images[kind] for kind in kinds],
            controlnet_conditioning_scale=[getattr(params, f"{kind}_scale") for kind in kinds],
            control_guidance_start=[getattr(params, f"{kind}_start") for kind in kinds],
            control_guidance_end=[getattr(params, f"{kind}_end") for kind in kinds],
        )
    elif case.kinds:  # the canny module: its edge map, as an image
        kwargs["control_image"] = Image.fromarray(annotations.images["canny"]).convert("RGB")
        kwargs["controlnet_conditioning_scale"] = params.controlnet_scale
    if case.ip_adapter:  # the frame is its own image prompt, as in ours
        kwargs["ip_adapter_image"] = frame
    return naive(**kwargs).images[0]


def run_case(case: Case, size: int, ours: Any, naive: Any, frames: int, clock: Clock, device: Any,
             warmup: bool = True) -> dict[str, Any]:
    import torch

    params = case_params(ours, case, size)
    if case.ip_adapter:
        naive.set_ip_adapter_scale(params.ip_adapter_scale)  # once, as ours sets it when it changes
    modules = model_modules(case, ours.pipe)
    required = ("unet", "decoder") if case.text_to_image else ("encoder", "unet", "decoder")
    result: dict[str, Any] = {"pipeline": case.name, "size": size, "frames": []}
    for index in range(-1 if warmup else 0, frames):  # -1: the warm-up frame, not counted
        frame = None if case.text_to_image else camera_frame(index, size)
        with Recorder(modules) as recorder, annotators_timed(case, ours, clock) as annotations:
            _, total_s = clock(lambda: ours.predict(params, frame))
        calls = recorder.calls
        missing = [role for role in required if not recorder.count(role)]
        if missing:
            raise SystemExit(f"model_path: {case.name}: predict made no {', '.join(missing)} call that could be recorded")
        decoder_input = next(args[0] for role, _, args, _ in calls if role == "decoder")
        finite = bool(torch.isfinite(decoder_input).all())
        parts = replay(calls, clock)
        del calls, recorder, decoder_input
        with Recorder({"unet": naive.unet}, keep_inputs=False) as naive_recorder:
            _, naive_s = clock(lambda: naive_frame(naive, case, params, frame, device, annotations))
        floor_s = sum(seconds for _, seconds in parts)
        ours_s = total_s - annotations.total
        record = {
            "ours_s": ours_s,
            "ours_total_s": total_s,
            "annotators_s": annotations.total,
            "annotator_parts_s": dict(annotations.seconds),
            "floor_s": floor_s,
            "naive_s": naive_s,
            "floor_parts_s": _group(parts),
            "unet_calls": sum(1 for role, _ in parts if role == "unet"),
            "controlnet_calls": sum(1 for role, _ in parts if role == "controlnet"),
            "naive_unet_calls": naive_recorder.count("unet"),
            "latents_finite": finite,
        }
        label = "warm-up" if index < 0 else f"frame {index + 1}/{frames}"
        annotated = f" (+ annotators {annotations.total:.3f} s)" if annotations.seconds else ""
        report.progress(
            f"  {case.name} {size}x{size} {label}: ours {ours_s:.3f} s{annotated}, floor {floor_s:.3f} s, "
            f"naive {naive_s:.3f} s" + ("" if finite else "  (warning: non-finite latents)")
        )
        if index >= 0:
            result["frames"].append(record)
    return summarise(result)


def _group(parts: list[tuple[str, float]]) -> dict[str, float]:
    grouped: dict[str, float] = {}
    for role, seconds in parts:
        grouped[role] = grouped.get(role, 0.0) + seconds
    return grouped


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    frames = result["frames"]
    for key in ("ours_s", "ours_total_s", "annotators_s", "floor_s", "naive_s"):
        result[key.removesuffix("_s")] = report.stats([f[key] for f in frames])
    result["ours_over_floor"] = report.stats([f["ours_s"] / f["floor_s"] for f in frames])
    result["naive_over_ours"] = report.stats([f["naive_s"] / f["ours_s"] for f in frames])
    roles = sorted({role for f in frames for role in f["floor_parts_s"]})
    result["floor_parts"] = {role: report.stats([f["floor_parts_s"].get(role, 0.0) for f in frames]) for role in roles}
    kinds = sorted({kind for f in frames for kind in f["annotator_parts_s"]})
    result["annotator_parts"] = {kind: report.stats([f["annotator_parts_s"].get(kind, 0.0) for f in frames])
                                 for kind in kinds}
    result["overhead"] = report.stats([f["ours_s"] - f["floor_s"] for f in frames])
    last = frames[-1] if frames else {}
    for key in ("unet_calls", "controlnet_calls", "naive_unet_calls"):
        result[key] = last.get(key)
    result["latents_finite"] = all(f["latents_finite"] for f in frames)
    return result


def describe_case(case: Case, ours: Any, naive: Any) -> dict[str, Any]:
    """What a case runs, for the report: its models, scheduler, parameters and the stock pipeline."""
    params = ours.InputParams()
    what = case.set_up.describe() if case.set_up is not None else (type(ours).__module__.removeprefix("pipelines.")
                                                                      + ": the pipeline module")
    return {
        "pipeline": case.name, "what": what, "family": case.family, "scheduler": type(ours.pipe.scheduler).__name__,
        "steps": case.steps, "strength": None if case.text_to_image or case.pix2pix else case.strength,
        "guidance_scale": getattr(params, "guidance_scale", None), "eta": getattr(params, "eta", None),
        "controlnets": list(case.kinds), "text_to_image": case.text_to_image,
        "naive": type(naive).__name__, "naive_steps": case.naive_steps,
    }


# --- report -----------------------------------------------------------------------------------------


def _span(s: dict[str, Any], digits: int = 3) -> str:
    if not s["n"]:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def results_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        calls = f"{r['unet_calls']}/{r['naive_unet_calls']}"
        annotators = _span(r["annotators"]) if r["annotator_parts"] else "none"
        rows.append([
            r["pipeline"], f"{r['size']}x{r['size']}", calls, annotators, _span(r["ours"]), _span(r["floor"]),
            _span(r["naive"]), _span(r["ours_over_floor"], 2), _span(r["naive_over_ours"], 2),
        ])
    headers = ["pipeline", "size", "UNet calls ours/naive", "annotators s/frame", "ours s/frame", "floor s/frame",
               "naive s/frame", "ours/floor", "naive/ours"]
    return table_note(report.table(headers, rows, "llrrrrrrr"),
                      "median [min-max] over the measured frames; ratios are taken frame by frame; ours and naive "
                      "without the annotators (naive gets the control images ours' annotators made), which are "
                      "their own column")


def cases_table(cases: list[dict[str, Any]]) -> str:
    rows = []
    for c in cases:
        controls = ", ".join(f"{kind} ({_ANNOTATOR_NAMES.get(kind, kind)})" for kind in c["controlnets"]) or "-"
        steps = f"{c['steps']}" if c["strength"] is None else f"{c['steps']} at {c['strength']:g}"
        eta = "" if c["eta"] is None else f", eta {c['eta']:g}"
        guidance = "-" if c["guidance_scale"] is None else f"{c['guidance_scale']:g}{eta}"
        rows.append([c["pipeline"], c["what"], c["scheduler"].removesuffix("Scheduler"), steps,
                     guidance, controls, f"{c['naive']} ({c['naive_steps']} steps)"])
    headers = ["pipeline", "models", "scheduler", "steps", "guidance", "ControlNets (annotator)", "naive"]
    return report.table(headers, rows, "lllrlll")


_ANNOTATOR_NAMES = {"canny": "OpenCV Canny", "depth": "depth model", "lineart": "difference of Gaussians",
                    "qr": "the frame"}


def parts_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        parts = r["floor_parts"]

        def cell(role: str) -> str:
            return f"{parts[role]['median']:.3f}" if role in parts else "-"

        annotators = ", ".join(f"{kind} {stats['median']:.3f}" for kind, stats in r["annotator_parts"].items()) or "-"
        rows.append([
            r["pipeline"], f"{r['size']}x{r['size']}", cell("image_encoder"), cell("encoder"),
            f"{cell('unet')} ({r['unet_calls']})",
            f"{cell('controlnet')} ({r['controlnet_calls']})" if r["controlnet_calls"] else "-",
            cell("decoder"), f"{r['floor']['median']:.3f}", f"{r['overhead']['median']:.3f}", annotators,
        ])
    headers = ["pipeline", "size", "image encoder (IP-Adapter)", "VAE encoder", "UNet (calls)", "ControlNet (calls)",
               "VAE decoder", "floor", "ours - floor", "annotators (not in either)"]
    return table_note(report.table(headers, rows, "llrrrrrrrl"),
                      "seconds per frame, medians; each part is the sum of that model's calls in one frame; the VAE "
                      "is TAESD, pix2pix_turbo's the full AutoencoderKL (its decoder with the skips' convolutions)")


def table_note(text: str, note: str) -> str:
    return f"{text}\n\n{note}"


def targets(results: list[dict[str, Any]], settings: dict[str, Any], quick: bool) -> tuple[str, list[dict[str, Any]]]:
    checks = []
    for r in results:
        if r["size"] == 512:
            value = r["ours_over_floor"]["median"]
            checks.append({"target": f"{r['pipeline']} 512x512: ours/floor <= {TARGET_OURS_OVER_FLOOR:.2f}",
                           "measured": value, "met": value is not None and value <= TARGET_OURS_OVER_FLOOR})
    img2img_512 = next((r for r in results if r["pipeline"] == "img2img" and r["size"] == 512), None)
    target = f"img2img 512x512 float32 on CPU: naive/ours >= {TARGET_NAIVE_OVER_OURS:.1f}"
    if img2img_512 and settings["dtype"] == "float32" and settings["device"] == "cpu":
        value = img2img_512["naive_over_ours"]["median"]
        checks.append({"target": target, "measured": value, "met": value is not None and value >= TARGET_NAIVE_OVER_OURS})
    else:
        checks.append({"target": target, "measured": None, "met": None})
    measured = [r for r in results if r["naive_over_ours"]["median"] is not None]
    slowest = min(measured, key=lambda r: r["naive_over_ours"]["median"], default=None)
    target = f"every case and size: naive/ours >= {TARGET_NAIVE_OVER_OURS_EVERY_CASE:.2f}"
    if slowest is None:
        checks.append({"target": target, "measured": None, "met": None})
    else:
        value = slowest["naive_over_ours"]["median"]
        checks.append({"target": f"{target} (lowest: {slowest['pipeline']} {slowest['size']}x{slowest['size']})",
                       "measured": value, "met": value >= TARGET_NAIVE_OVER_OURS_EVERY_CASE})
    rows = []
    for check in checks:
        if quick:
            verdict = "not judged (--quick: miniature models)"
        elif check["met"] is None:
            verdict = "not measured by this run"
        else:
            verdict = "met" if check["met"] else "MISSED"
        measured_cell = "-" if check["measured"] is None else f"{check['measured']:.2f}"
        rows.append([check["target"], measured_cell, verdict])
        check["verdict"] = verdict
    return report.table(["target", "median", "verdict"], rows, "lrl"), checks


# --- main ---------------------------------------------------------------------------------------------


def _list(values: list[str]) -> list[str]:
    return [item for value in values for item in value.split(",") if item]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-frame cost of the server's predict path (ours) vs its model forwards (floor) and a "
                    "stock diffusers pipeline (naive), full-size models with random weights, for the pipeline "
                    "modules and every model set-up.",
    )
    parser.add_argument("--pipelines", nargs="+", default=["all"], metavar="NAME",
                        help="pipeline modules and set-ups (the names of --list-pipelines), comma- or space-separated, "
                             f"or the groups all (the default), modules ({','.join(PIPELINES)}) and setups (every "
                             "set-up but the anchor's other names of modules)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="N",
                        help="square frame sizes; default: 512,256 (--quick: 256); a case that does not take a size "
                             "(SDXL set-ups: 512 and up) runs at its smallest instead")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"measured frames per case and size, after one warm-up frame; default {DEFAULT_FRAMES} "
                             "(--quick: 1)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: the server's choice (float16 on GPUs, bfloat16 on CPUs with native bf16, else float32)")
    parser.add_argument("--device", default="auto", help="auto (the server's choice), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; default: torch's choice (--quick: 1, which the miniature models need no more "
                             "than, and which keeps CI fast on a busy machine)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="build ours with --torch-compile (the warm-up frame compiles; floor replays the compiled modules)")
    parser.add_argument("--quick", action="store_true",
                        help="miniature models, 1 frame (no warm-up) at 256x256 (SDXL 512x512), 1 thread: every case in "
                             "about a minute, to keep the code working (CI)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    args.pipelines, unknown = resolve_names(_list(args.pipelines))
    if unknown or not args.pipelines:
        parser.error(f"unknown pipeline(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(GROUPS)}, "
                     f"{', '.join(PIPELINES)}, {', '.join(setup_names())}")
    try:
        args.sizes = [int(s) for s in _list(args.sizes)] if args.sizes else ([256] if args.quick else list(SIZES))
    except ValueError:
        parser.error("--sizes takes integers, e.g. --sizes 512,256")
    if any(s % 8 or not 256 <= s <= 1024 for s in args.sizes):
        parser.error("--sizes: multiples of 8 from 256 to 1024 (the pipelines' bounds)")
    args.frames = args.frames if args.frames is not None else (1 if args.quick else DEFAULT_FRAMES)
    if args.threads is None:
        args.threads = 1 if args.quick else 0
    if args.threads < 0:
        parser.error("--threads: 0 (torch's choice) or more")
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    return args


def measure(name: str, args: argparse.Namespace, full: bool, device: Any, dtype: Any, clock: Clock,
            record: dict[str, list[Any]]) -> None:
    """One case at its sizes: built, measured, released; into record's results, cases and skipped."""
    import torch

    case = case_for(name)
    if full and device.type == "cpu" and (shortfall := host_memory_shortfall(case, dtype)):
        record["skipped"].append({"pipeline": name, "why": shortfall})
        report.progress(f"{name}: not built: {shortfall}")
        return
    report.progress(f"{name}: building {'full-size' if full else 'miniature'} models")
    build_started = time.perf_counter()
    ours = build_ours(case, build_components(case, full), full, device, dtype, args.torch_compile)
    naive = build_naive(case, build_components(case, full), ours.pipe.scheduler, device, dtype)
    report.progress(f"{name}: built in {time.perf_counter() - build_started:.1f} s")
    record["cases"].append(describe_case(case, ours, naive))
    smallest = smallest_size(ours.InputParams)
    sizes = list(dict.fromkeys(max(size, smallest) for size in args.sizes))
    if sizes != args.sizes:
        report.progress(f"{name}: takes {smallest} and up: measured at {', '.join(map(str, sizes))}")
    try:
        for size in sizes:
            record["results"].append(run_case(case, size, ours, naive, args.frames, clock, device, warmup=full))
    finally:
        del ours, naive
        release_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def release_memory() -> None:
    """Collect the last case's models and give their memory back to the system: glibc keeps freed
    blocks of under 32 MB (most of a UNet's weights) in its heap, where the next case's memory check
    (MemAvailable) would not see them, and other processes could not use them."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its own allocator's business
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    device, dtype, clock, env = torch_setup(args)
    full = not args.quick
    settings = {
        "models": "full-size, random weights" if full else "miniature (--quick)",
        "device": device.type if device.index is None else str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "frames": f"{args.frames} + 1 warm-up" if full else f"{args.frames}, no warm-up (--quick)",
        "sizes": args.sizes,
        "torch_compile": args.torch_compile,
        "timer": "CUDA events" if clock.cuda else "perf_counter",
    }
    report.progress(f"model_path: {len(args.pipelines)} case(s) ({', '.join(args.pipelines)}) at "
                    f"{', '.join(map(str, args.sizes))} on {device}, {settings['dtype']}, {args.frames} frame(s)")
    record: dict[str, list[Any]] = {"results": [], "cases": [], "skipped": [], "failures": []}
    for name in args.pipelines:
        try:
            measure(name, args, full, device, dtype, clock, record)
        except Exception as error:  # noqa: BLE001  (one case's failure: the next goes on, and the run fails)
            record["failures"].append({"pipeline": name, "error": f"{type(error).__name__}: {error}",
                                       "traceback": traceback.format_exc()[-3000:]})
            report.progress(f"model_path: {name} failed:\n{traceback.format_exc()}")
    results = record["results"]

    description = (
        "ours: the pipeline's own predict() less its annotators; floor: the sum of the model forwards that frame made "
        "(TAESD encoder, each UNet / ControlNet call, TAESD decoder; pix2pix_turbo: the full VAE's), replayed one by "
        "one on the same inputs; naive: the stock diffusers pipeline of the case (pix2pix_turbo: the paper's code's "
        "way on stock diffusers modules, adapters unfused) per frame with the prompt string and the full "
        "AutoencoderKL, given ours' control images (pix2pix_turbo: its edge map); annotators: the time ours spent "
        "making them (Canny, depth model, line art, Scharr edges)"
    )
    report.print_figure("Model path: seconds per frame", env, settings, f"{description}\n\n{results_table(results)}")
    report.print_figure("Model path: where the floor goes", env, settings, parts_table(results))
    report.print_figure("Model path: what each case runs", env, settings, cases_table(record["cases"]))
    target_text, checks = targets(results, settings, args.quick)
    not_run = [f"- {s['pipeline']}: not built: {s['why']}" for s in record["skipped"]]
    not_run += [f"- {f['pipeline']}: failed: {f['error'][:300]}" for f in record["failures"]]
    report.print_figure("Model path: targets", env, settings,
                        target_text + ("\n\nNot measured:\n" + "\n".join(not_run) if not_run else ""))
    report.finish("model_path", started, env, args.json, settings=settings, prompt=PROMPT, results=results,
                  cases=record["cases"], skipped=record["skipped"], failures=record["failures"], targets=checks)
    return 1 if record["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
