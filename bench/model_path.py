"""Model-path benchmark: per-frame cost of the server's own predict path ("ours") against the sum of
the model forwards that frame needs ("floor") and a stock diffusers pipeline ("naive"), with
full-size architectures and random weights (bench/full_size.py: no download, no hub).

    .venv/bin/python bench/model_path.py --dtype float32      # everything: about 12 min on 2 CPU cores
    .venv/bin/python bench/model_path.py --dtype float32 --pipelines img2img --sizes 512 --frames 5
    .venv/bin/python bench/model_path.py --quick              # miniature models, 1 frame: seconds (CI)

For each pipeline (`img2img`: 4 steps at strength 0.5, i.e. 2 UNet calls; `img2img_sd_turbo`: 1 step;
`controlnet_canny`: 4 steps at strength 0.5, 2 ControlNet + UNet calls) and size, every measured
frame runs, in this order, on the same camera-like input:

- ours: `Pipeline.predict(params, image)` of the real pipeline module, unchanged: crop, image to
  tensor, cached prompt embeddings, the shared `denoise` loop with TAESD, tensor to PIL image. It is
  what the server's worker calls (the worker's JPEG encode is measured by bench/serving_path.py).
- floor: each model forward that frame of ours made (TAESD encoder, every UNet and ControlNet
  call, TAESD decoder), recorded with forward pre-hooks during ours and replayed one at a time on
  the very same inputs and modules (same dtype, memory format, compilation), timed separately and
  summed. ours/floor is the cost of everything around the models.
- naive: the common approach: a stock diffusers `StableDiffusionImg2ImgPipeline` (ControlNet:
  `StableDiffusionControlNetImg2ImgPipeline`, with the same Canny edge map computed per frame) called
  per frame with the prompt string (the text encoder runs every frame) and the full AutoencoderKL,
  the same scheduler, steps, strength, guidance and dtype, and its own copies of the same-shaped
  UNet, ControlNet and text encoder in diffusers' default memory format. It makes the same number
  of UNet calls as ours (the table shows both counts): SD-Turbo at 1 step is called as its model card
  does img2img, `num_inference_steps=2, strength=0.5`, since diffusers refuses 1 step at 0.5.

How ours gets full-size models. With `tiny=True` a pipeline module builds its components by calling
the builders of `pipelines._tiny` (`tiny_sd15`, `tiny_sd21`, `tiny_controlnet`, `tiny_taesd`), looked up
as module attributes when `Pipeline.__init__` runs. The benchmark points those names at full-size
builders for the duration of that one constructor call, so the module's own `__init__` runs
unchanged on full-size models: `build_pipeline` (the cast to the run dtype), the scheduler, LoRAs,
`swap_in_taesd`, `optimize` (device, channels_last, torch.compile) and `PromptCache`, and `predict` is
the real one. Nothing in server/ or pipelines/ is re-implemented here, so the benchmark follows the
code as it changes; re-running those setup steps by hand on a tiny pipeline would copy them and
drift. After construction the script checks that the pipeline really holds the full-size modules
and stops with a message if a pipeline no longer builds its miniature models through those names.

Times are wall-clock per frame: time.perf_counter on CPU; on CUDA, CUDA events around the call with
a synchronisation before and after. Each pipeline and size gets one warm-up frame (it also fills
the prompt cache, as the server's warm-up and a user's first frame do) before `--frames` measured
frames; the table gives the median [min-max] over those frames, and the ratios are taken frame by
frame. The prompt is 75 characters or fewer, so with the byte-level stand-in tokenizer the text
embeddings are 77 tokens, as with the real CLIP tokenizer.

Run time on the project's 2-core CPU machine, default 3 frames + 1 warm-up, all three pipelines at 512
and 256 (estimated from the component costs in shared/ENVIRONMENT.md and a partial run): about
12 min in float32 and about 7 min in bfloat16 (`--dtype auto` there), of which about 2 min builds the
random models; a frame more adds about 2 min (float32). `--pipelines img2img --sizes 256 --frames 1`
takes about 1.5 min; `--quick` about 10 s. Peak memory about 12 GB (float32, controlnet_canny: ours
and naive each hold a UNet and a ControlNet).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/model_path.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from bench import report  # noqa: E402

PIPELINES = ("img2img", "img2img_sd_turbo", "controlnet_canny")
SIZES = (512, 256)
DEFAULT_FRAMES = 3
# At most 75 characters: one token per character with the stand-in tokenizer, padded to 77 like CLIP's.
PROMPT = "a watercolour painting of a red fox in a misty forest, soft light, detailed"
TARGET_OURS_OVER_FLOOR = 1.10
TARGET_NAIVE_OVER_OURS = 2.0


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # "sd15" (LCM Dreamshaper v7), "sd21" (sd-turbo) or "sdxl" (SDXL base)
    steps: int
    strength: float
    naive_steps: int  # num_inference_steps giving the stock pipeline the same number of UNet calls
    controlnet: bool = False


CASES = {
    "img2img": Case("img2img", "sd15", steps=4, strength=0.5, naive_steps=4),
    "img2img_sd_turbo": Case("img2img_sd_turbo", "sd21", steps=1, strength=0.5, naive_steps=2),
    "controlnet_canny": Case("controlnet_canny", "sd15", steps=4, strength=0.5, naive_steps=4, controlnet=True),
}

# --- components -----------------------------------------------------------------------------------


def build_components(case: Case, full: bool, device: Any = None) -> dict[str, Any]:
    """Fresh unet, vae (AutoencoderKL), text_encoder, tokenizer, taesd and (ControlNet) controlnet; SDXL
    (family "sdxl") also text_encoder_2 and tokenizer_2, and TAESDXL as taesd. With `device` (full size
    only), built on that device (`full_size.built_on`), or on the CPU if that fails."""
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
    if full:
        from bench import full_size

        if case.family == "sdxl":
            components = full_size.sdxl()
            components["taesd"] = full_size.taesdxl()
        else:
            components = full_size.sd15(lcm=True) if case.family == "sd15" else full_size.sd21()
            components["taesd"] = full_size.taesd()
        if case.controlnet:
            components["controlnet"] = full_size.controlnet(components["unet"])
    else:
        if case.family == "sdxl":
            components = tiny.tiny_sdxl()
            components["taesd"] = tiny.tiny_taesdxl()
        else:
            components = tiny.tiny_sd15(lcm=True) if case.family == "sd15" else tiny.tiny_sd21()
            components["taesd"] = tiny.tiny_taesd()
        if case.controlnet:
            components["controlnet"] = tiny.tiny_controlnet(components["unet"])
    return components


@contextlib.contextmanager
def full_size_builders(components: dict[str, Any]) -> Iterator[None]:
    """Point `pipelines._tiny`'s builders at `components` while a pipeline module is constructed."""
    from pipelines import _tiny as tiny

    keys = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    base = {key: components[key] for key in keys if key in components}
    replacements = {
        "tiny_sd15": lambda *args, **kwargs: dict(base),
        "tiny_sd21": lambda *args, **kwargs: dict(base),
        "tiny_sdxl": lambda *args, **kwargs: dict(base),
        "tiny_taesd": lambda *args, **kwargs: components["taesd"],
        "tiny_taesdxl": lambda *args, **kwargs: components["taesd"],
        "tiny_controlnet": lambda *args, **kwargs: components["controlnet"],
        # The LoRA SDXL's pipeline fuses (the LCM-LoRA): one made for the full-size UNet.
        "tiny_lora": lambda unet, *args, **kwargs: _full_size_lora(unet),
    }
    saved = {name: getattr(tiny, name) for name in replacements}
    try:
        for name, builder in replacements.items():
            setattr(tiny, name, builder)
        yield
    finally:
        for name, builder in saved.items():
            setattr(tiny, name, builder)


def _full_size_lora(unet: Any) -> dict[str, Any]:
    from bench import full_size

    return full_size.lora(unet)


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


def check_full_size(case: Case, pipeline: Any, components: dict[str, Any]) -> None:
    """Stop with a message unless `pipeline` holds the full-size modules of `components`."""
    pipe = pipeline.pipe
    expected = {"unet": components["unet"], "vae": components["taesd"]}
    if case.controlnet:
        expected["controlnet"] = components["controlnet"]
    for name, model in expected.items():
        if _unwrapped(getattr(pipe, name, None)) is not model:
            raise SystemExit(
                f"model_path: pipelines/{case.name}.py did not take the full-size {name} through "
                "pipelines._tiny's builders (its miniature models are built another way now): update "
                "build_ours() in bench/model_path.py."
            )


def build_naive(case: Case, components: dict[str, Any], scheduler: Any, device: Any, dtype: Any) -> Any:
    import torch
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionImg2ImgPipeline

    names = ["unet", "vae", "text_encoder"] + (["controlnet"] if case.controlnet else [])
    models = {name: torch.nn.Module.to(components[name], dtype=dtype) for name in names}
    cls = StableDiffusionControlNetImg2ImgPipeline if case.controlnet else StableDiffusionImg2ImgPipeline
    naive = cls(
        **models,
        tokenizer=components["tokenizer"],
        scheduler=type(scheduler).from_config(scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    naive.to(device)
    naive.set_progress_bar_config(disable=True)
    return naive


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
    """Records every forward call (module, args, kwargs) of the given modules, in call order."""

    def __init__(self, modules: dict[str, Any], keep_inputs: bool = True) -> None:
        self.modules = {role: module for role, module in modules.items() if module is not None}
        self.keep_inputs = keep_inputs
        self.calls: list[tuple[str, Any, tuple, dict]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> Recorder:
        for role, module in self.modules.items():
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


def model_modules(pipe: Any) -> dict[str, Any]:
    """The modules whose forwards make the floor: TAESD encoder and decoder, UNet, ControlNet."""
    return {
        "encoder": getattr(pipe.vae, "encoder", None),
        "controlnet": getattr(pipe, "controlnet", None),
        "unet": pipe.unet,
        "decoder": getattr(pipe.vae, "decoder", None),
    }


def replay(calls: list[tuple[str, Any, tuple, dict]], clock: Clock) -> list[tuple[str, float]]:
    import torch

    parts = []
    with torch.inference_mode():
        for role, module, args, kwargs in calls:
            _, seconds = clock(lambda: module(*args, **kwargs))
            parts.append((role, seconds))
    return parts


def naive_frame(naive: Any, case: Case, params: Any, frame: Any, device: Any) -> Any:
    import cv2
    import torch
    from PIL import Image

    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "image": frame,
        "num_inference_steps": case.naive_steps,
        "strength": params.strength,
        "guidance_scale": params.guidance_scale,
        "generator": torch.Generator(device=device).manual_seed(params.seed),
    }
    if case.controlnet:
        edges = cv2.Canny(np.asarray(frame), params.canny_low, params.canny_high)
        kwargs["control_image"] = Image.fromarray(edges).convert("RGB")
        kwargs["controlnet_conditioning_scale"] = params.controlnet_scale
    return naive(**kwargs).images[0]


def run_case(case: Case, size: int, ours: Any, naive: Any, frames: int, clock: Clock, device: Any) -> dict[str, Any]:
    import torch

    params = ours.InputParams(prompt=PROMPT, steps=case.steps, strength=case.strength, width=size, height=size)
    modules = model_modules(ours.pipe)
    result: dict[str, Any] = {"pipeline": case.name, "size": size, "frames": []}
    for index in range(-1, frames):  # -1: the warm-up frame, not counted
        frame = camera_frame(index, size)
        with Recorder(modules) as recorder:
            _, ours_s = clock(lambda: ours.predict(params, frame))
        calls = recorder.calls
        missing = [role for role in ("encoder", "unet", "decoder") if not recorder.count(role)]
        if missing:
            raise SystemExit(f"model_path: {case.name}: predict made no {', '.join(missing)} call that could be recorded")
        decoder_input = next(args[0] for role, _, args, _ in calls if role == "decoder")
        finite = bool(torch.isfinite(decoder_input).all())
        parts = replay(calls, clock)
        del calls, recorder, decoder_input
        with Recorder({"unet": naive.unet}, keep_inputs=False) as naive_recorder:
            _, naive_s = clock(lambda: naive_frame(naive, case, params, frame, device))
        floor_s = sum(seconds for _, seconds in parts)
        record = {
            "ours_s": ours_s,
            "floor_s": floor_s,
            "naive_s": naive_s,
            "floor_parts_s": _group(parts),
            "unet_calls": sum(1 for role, _ in parts if role == "unet"),
            "controlnet_calls": sum(1 for role, _ in parts if role == "controlnet"),
            "naive_unet_calls": naive_recorder.count("unet"),
            "latents_finite": finite,
        }
        label = "warm-up" if index < 0 else f"frame {index + 1}/{frames}"
        report.progress(
            f"  {case.name} {size}x{size} {label}: ours {ours_s:.3f} s, floor {floor_s:.3f} s, naive {naive_s:.3f} s"
            + ("" if finite else "  (warning: non-finite latents)")
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
    for key in ("ours_s", "floor_s", "naive_s"):
        result[key.removesuffix("_s")] = report.stats([f[key] for f in frames])
    result["ours_over_floor"] = report.stats([f["ours_s"] / f["floor_s"] for f in frames])
    result["naive_over_ours"] = report.stats([f["naive_s"] / f["ours_s"] for f in frames])
    roles = sorted({role for f in frames for role in f["floor_parts_s"]})
    result["floor_parts"] = {role: report.stats([f["floor_parts_s"].get(role, 0.0) for f in frames]) for role in roles}
    result["overhead"] = report.stats([f["ours_s"] - f["floor_s"] for f in frames])
    last = frames[-1] if frames else {}
    for key in ("unet_calls", "controlnet_calls", "naive_unet_calls"):
        result[key] = last.get(key)
    result["latents_finite"] = all(f["latents_finite"] for f in frames)
    return result


# --- report -----------------------------------------------------------------------------------------


def _span(s: dict[str, Any], digits: int = 3) -> str:
    if not s["n"]:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def results_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        calls = f"{r['unet_calls']}/{r['naive_unet_calls']}"
        rows.append([
            r["pipeline"], f"{r['size']}x{r['size']}", calls, _span(r["ours"]), _span(r["floor"]), _span(r["naive"]),
            _span(r["ours_over_floor"], 2), _span(r["naive_over_ours"], 2),
        ])
    headers = ["pipeline", "size", "UNet calls ours/naive", "ours s/frame", "floor s/frame", "naive s/frame",
               "ours/floor", "naive/ours"]
    return table_note(report.table(headers, rows, "llrrrrrr"),
                      "median [min-max] over the measured frames; ratios are taken frame by frame")


def parts_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        parts = r["floor_parts"]

        def cell(role: str) -> str:
            return f"{parts[role]['median']:.3f}" if role in parts else "-"

        rows.append([
            r["pipeline"], f"{r['size']}x{r['size']}", cell("encoder"),
            f"{cell('unet')} ({r['unet_calls']})",
            f"{cell('controlnet')} ({r['controlnet_calls']})" if r["controlnet_calls"] else "-",
            cell("decoder"), f"{r['floor']['median']:.3f}", f"{r['overhead']['median']:.3f}",
        ])
    headers = ["pipeline", "size", "TAESD encoder", "UNet (calls)", "ControlNet (calls)", "TAESD decoder",
               "floor", "ours - floor"]
    return table_note(report.table(headers, rows, "llrrrrrr"),
                      "seconds per frame, medians; each part is the sum of that model's calls in one frame")


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
    rows = []
    for check in checks:
        if quick:
            verdict = "not judged (--quick: miniature models)"
        elif check["met"] is None:
            verdict = "not measured by this run"
        else:
            verdict = "met" if check["met"] else "MISSED"
        measured = "-" if check["measured"] is None else f"{check['measured']:.2f}"
        rows.append([check["target"], measured, verdict])
        check["verdict"] = verdict
    return report.table(["target", "median", "verdict"], rows, "lrl"), checks


# --- main ---------------------------------------------------------------------------------------------


def _list(values: list[str]) -> list[str]:
    return [item for value in values for item in value.split(",") if item]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-frame cost of the server's predict path (ours) vs its model forwards (floor) and a "
                    "stock diffusers pipeline (naive), full-size models with random weights.",
    )
    parser.add_argument("--pipelines", nargs="+", default=[",".join(PIPELINES)], metavar="NAME",
                        help=f"comma- or space-separated; default: {','.join(PIPELINES)}")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="N",
                        help="square frame sizes; default: 512,256 (--quick: 256)")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"measured frames per pipeline and size, after one warm-up frame; default {DEFAULT_FRAMES} "
                             "(--quick: 1)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: the server's choice (float16 on GPUs, bfloat16 on CPUs with native bf16, else float32)")
    parser.add_argument("--device", default="auto", help="auto (the server's choice), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; default: torch's choice (--quick: 1, which the miniature models need no more "
                             "than, and which keeps CI fast on a busy machine)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="build ours with --torch-compile (the warm-up frame compiles; floor replays the compiled modules)")
    parser.add_argument("--quick", action="store_true", help="miniature models, 1 frame at 256x256, 1 thread: seconds (CI)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    args.pipelines = _list(args.pipelines)
    unknown = [name for name in args.pipelines if name not in CASES]
    if unknown:
        parser.error(f"unknown pipeline(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    device, dtype, clock, env = torch_setup(args)
    full = not args.quick
    settings = {
        "models": "full-size, random weights" if full else "miniature (--quick)",
        "device": device.type if device.index is None else str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "frames": f"{args.frames} + 1 warm-up",
        "sizes": args.sizes,
        "torch_compile": args.torch_compile,
        "timer": "CUDA events" if clock.cuda else "perf_counter",
    }
    report.progress(f"model_path: {', '.join(args.pipelines)} at {', '.join(map(str, args.sizes))} on {device}, "
                    f"{settings['dtype']}, {args.frames} frame(s)")
    results = []
    for name in args.pipelines:
        case = CASES[name]
        report.progress(f"{name}: building {'full-size' if full else 'miniature'} models")
        build_started = time.perf_counter()
        ours = build_ours(case, build_components(case, full), full, device, dtype, args.torch_compile)
        naive = build_naive(case, build_components(case, full), ours.pipe.scheduler, device, dtype)
        report.progress(f"{name}: built in {time.perf_counter() - build_started:.1f} s")
        for size in args.sizes:
            results.append(run_case(case, size, ours, naive, args.frames, clock, device))
        del ours, naive
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    description = (
        "ours: the pipeline's own predict(); floor: the sum of the model forwards that frame made (TAESD encoder, "
        "each UNet / ControlNet call, TAESD decoder), replayed one by one on the same inputs; naive: stock diffusers "
        "img2img pipeline per frame with the prompt string and the full AutoencoderKL"
    )
    report.print_figure("Model path: seconds per frame", env, settings, f"{description}\n\n{results_table(results)}")
    report.print_figure("Model path: where the floor goes", env, settings, parts_table(results))
    target_text, checks = targets(results, settings, args.quick)
    report.print_figure("Model path: targets", env, settings, target_text)
    report.finish("model_path", started, env, args.json, settings=settings, prompt=PROMPT, results=results,
                  targets=checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
