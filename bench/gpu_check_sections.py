"""The sections of bench/gpu_check.py, run in its child process (torch is imported here, not in the
process that watches). Each section fills a record and writes it (`Context.save`) after every figure, so
that a section killed for its time, or a process that dies, leaves what it had measured.

The measuring is the other benchmarks' own code: the builders and the clock of bench/model_path.py
(full-size random models through the pipeline modules' own constructors, CUDA-event timing), the
streams of bench/temporal.py, the clients of bench/serving_path.py against the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from bench import report
from bench.gpu_check import CONTROL, caps, minimums
from bench.model_path import CASES as MODEL_PATH_CASES
from bench.model_path import PROMPT, Case, Clock, Recorder, build_components, build_ours, camera_frame, case_for

# Full-size random builders per pipeline module: model_path's four, and the two it does not measure
# (the set-ups' cases come from bench/model_path.py's `case_for`).
CASES = {
    **MODEL_PATH_CASES,
    "txt2img": Case("txt2img", "sd15", steps=4, strength=1.0, naive_steps=4),
    "img2img_sdxl_lcm_lora": Case("img2img_sdxl_lcm_lora", "sdxl", steps=4, strength=0.5, naive_steps=4),
}
# Model set-ups (pipelines/_setups.py) measured besides the modules, each at its default size: one per
# accelerator and family, the depth annotators and an image prompt (IP-Adapter) among them. Left out:
# SDXL with LCM-LoRA (the module img2img_sdxl_lcm_lora is that), SDXL with Flash (it costs what Hyper-SD
# on SDXL does: a fused LoRA, one UNet call at 1024), and the two bases with no full-size builder of
# their own, Segmind Vega and SDXS (bench/full_size.py builds them as SDXL and SD 2.1: their figure here
# would be another set-up's).
SETUPS = (
    "controlnetLoraSD15", "controlnetDepthHyperSD", "controlnetFlashSD", "controlnetPCMSD15", "IPcompositionHyperSD15",
    "controlnetSDTurbo", "img2imgSDXLTurbo", "controlnetDepthHyperSDXL", "img2imgSDXL-Lightning",
)
# The most used first, as far as the section's time goes (what it does not reach is listed as skipped):
# the server's own modules that the other sections measure, then what runs in real time on one GPU (SD
# 1.5 and SD-Turbo set-ups, pix2pix-turbo, SDXL-Turbo at 512), then SDXL at 768 and 1024, the dearest last.
ORDER = (
    "img2img", "img2img_sd_turbo", "controlnet_canny", "controlnetLoraSD15", "controlnetDepthHyperSD",
    "controlnetSDTurbo", "pix2pix_turbo", "txt2img", "img2imgSDXLTurbo", "controlnetFlashSD", "controlnetPCMSD15",
    "IPcompositionHyperSD15", "img2img_sdxl_lcm_lora", "controlnetDepthHyperSDXL", "img2imgSDXL-Lightning",
)
# Measured frames of a set-up: at most these (and the section's limits); --quick: its warm-up frame is its
# one frame (the set-ups' code path, in half the time).
SETUP_FRAMES = {"frames": 2, "seconds": 1.0}
EXTRA_SIZES = {"img2img_sdxl_lcm_lora": (1024,)}  # besides each pipeline's default size (SDXL's is 768)
QUICK_SIZES = (256, 512)  # --quick: the first of these a pipeline takes (SDXL: 512 at least)
# Seconds to build a pipeline's full-size random models on a GPU host (built on the GPU), and to warm it
# up: below this much time left in the section, the pipeline is skipped. SDXL-Lightning's re-seeded UNet
# is built once more on the CPU (bench/model_path.py): LIGHTNING_EXTRA_S more.
BUILD_ESTIMATE_S = {"sd15": 15.0, "sd21": 15.0, "sdxl": 40.0}
LIGHTNING_EXTRA_S = 30.0
SIZE = 512  # batching, temporal, serving, torch_compile: img2img's default size
QUICK_SIZE = 256
USERS = (1, 2, 4, 8)
QUICK_USERS = (1, 2)  # --quick: batching and serving
CAMERA_FPS = 30.0
ECHO_DEFAULT_MS = 40.0  # the echo fallback's model time when model_path measured none

# Measured frames: at most this many, for at most this many seconds (always at least one).
FULL = {"frames": 30, "seconds": 3.0, "batches": 10, "temporal_frames": 10, "serving_s": 4.0, "serving_warmup_s": 1.0}
QUICK = {"frames": 1, "seconds": 0.5, "batches": 1, "temporal_frames": 3, "serving_s": 1.0, "serving_warmup_s": 0.3}

WHAT = {
    "model_path": "ms/frame: Pipeline.predict(params, frame) of the pipeline's own module or set-up (what the "
                  "server's worker calls, a set-up's annotators included), median [min-max] over the measured frames "
                  "after one warm-up frame (a set-up: at most 2); fps = 1 / median; UNet calls counted in the warm-up "
                  "frame; peak GPU: torch.cuda.max_memory_allocated over the frames.",
    "batching": "img2img, one predict_batch call for the users' frames (each its own prompt and seed, one size): "
                "fps total = users / batch time, fps per user = 1 / batch time.",
    "temporal": "img2img, one stream per temporal_consistency setting over a panning clip, interleaved frame by "
                "frame (bench/temporal.py); ms/frame over each stream's frames but its first; memory: the "
                "stream's StreamMemory.nbytes(), and on a GPU torch.cuda.max_memory_allocated over 3 frames of a "
                "fresh stream less what was allocated before (peak), and what is still allocated after them (held).",
    "serving": "users with a camera at 30 fps each (ping-pong as the page, never more than 30 frames a second) "
               "against the real server; fps per user, latency from a frame sent to its output read on the MJPEG "
               "stream (bench/serving_path.py's clients; frames matched by their stamp).",
    "torch_compile": "img2img at 512x512 (--quick: 256) built without and with --torch-compile (pipelines/_device.py: "
                     "UNet and VAE decoder); compile s = the first compiled frame less a frame without compiling; "
                     "ms/frame (steady) over the frames after the first three.",
}


class Context:
    """What the sections share: the mode, the torch device and dtype, the clock, the output folder and
    the current section's time."""

    def __init__(self, args: Any, device: Any, dtype: Any, clock: Clock) -> None:
        self.quick = args.quick
        self.device = device
        self.dtype = dtype
        self.clock = clock
        self.out = Path(args.out)
        self.limits = QUICK if args.quick else FULL
        self.cuda = device.type == "cuda"
        self.section_deadline = 0.0
        self.early_server: EarlyServer | None = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def left(self) -> float:
        return self.section_deadline - time.time()

    def save(self, name: str, record: dict[str, Any]) -> None:
        path = self.out / "sections" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(temporary, path)


def control(kind: str, rest: str = "") -> None:
    print(f"{CONTROL}{kind} {rest}".rstrip(), flush=True)


# --- helpers ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """torch.compile calls made in the block use `backend` (None: torch's default, inductor)."""
    if backend is None:
        yield
        return
    import torch

    original = torch.compile

    def compile_with(model: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("backend", backend)
        return original(model, **kwargs)

    torch.compile = compile_with
    try:
        yield
    finally:
        torch.compile = original


def build(ctx: Context, name: str, compile_: bool = False) -> tuple[Any, float]:
    """The pipeline module's own `Pipeline`: on full-size random models (bench/model_path.py's
    `build_ours`, built on the device), or with --quick the miniature ones (`--tiny`). Seconds taken."""
    import pipelines
    from pipelines import ModelOptions

    started = time.perf_counter()
    backend = "eager" if ctx.quick and compile_ else None
    with compile_backend(backend):
        if ctx.quick:
            options = ModelOptions(tiny=True, torch_compile=compile_)
            pipeline = pipelines.load_module(name).Pipeline(options, ctx.device, ctx.dtype)
        else:
            case = CASES[name] if name in CASES else case_for(name)
            components = build_components(case, True, ctx.device)
            pipeline = build_ours(case, components, True, ctx.device, ctx.dtype, compile_)
    synchronize(ctx)
    return pipeline, time.perf_counter() - started


def synchronize(ctx: Context) -> None:
    if ctx.cuda:
        import torch

        torch.cuda.synchronize(ctx.device)


def release(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        import torch

        torch.cuda.empty_cache()


def params_for(pipeline: Any, size: int, **extra: Any) -> Any:
    values = {"prompt": PROMPT, "width": size, "height": size, **extra}
    fields = pipeline.InputParams.model_fields
    return pipeline.InputParams(**{key: value for key, value in values.items() if key in fields})


def takes_image(name: str) -> bool:
    import pipelines

    return pipelines.load_module(name).Info().input_mode == "image"


def quick_size(pipeline: Any) -> int:
    from pydantic import ValidationError

    for size in QUICK_SIZES:
        try:
            params_for(pipeline, size)
            return size
        except ValidationError:
            continue
    return int(getattr(pipeline.InputParams(), "width", 512))


def time_frames(ctx: Context, fn: Callable[[], Any], count: int, seconds: float) -> list[float]:
    """Up to `count` timed calls, for up to `seconds` (at least one), fewer when the section's time runs short."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < count:
        if times and (time.perf_counter() - started > seconds or ctx.left() < 3 * max(times) + 2):
            break
        _, elapsed = ctx.clock(fn)
        times.append(elapsed)
    return times


def peak_reset(ctx: Context) -> int | None:
    if not ctx.cuda:
        return None
    import torch

    synchronize(ctx)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    return torch.cuda.memory_allocated(ctx.device)


def peak(ctx: Context) -> int | None:
    if not ctx.cuda:
        return None
    import torch

    synchronize(ctx)
    return torch.cuda.max_memory_allocated(ctx.device)


def fps(stats: dict[str, Any]) -> float | None:
    return 1.0 / stats["median"] if stats.get("median") else None


# --- sections -------------------------------------------------------------------------------------------


def model_path_names() -> list[str]:
    """What the model_path section measures, in its order: every module of --list-pipelines, and SETUPS."""
    import pipelines

    return sorted([*pipelines.available(), *SETUPS], key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def model_path(ctx: Context, record: dict[str, Any]) -> None:
    """Frames per second of every pipeline at its default size (SDXL also at 1024), and of the set-ups."""
    from pipelines._setups import ACCELERATORS, ANCHORS

    record.update(results=[], failures=[])
    names = model_path_names()
    record["pipelines"] = names
    for name in names:
        if not ctx.quick and name not in CASES and name not in ANCHORS:
            record["skipped"].append({"what": name, "why": "no full-size random builders for it (CASES in "
                                                         "bench/gpu_check_sections.py)"})
            continue
        set_up = ANCHORS.get(name)
        family = CASES[name].family if name in CASES else set_up.family if set_up else "sd15"
        need = 0.0 if ctx.quick else BUILD_ESTIMATE_S[family]
        if set_up is not None and ACCELERATORS[set_up.accelerator].unets and not ctx.quick:
            need += LIGHTNING_EXTRA_S
        if ctx.left() < need:
            record["skipped"].append({"what": name, "why": f"{ctx.left():.0f} s left in the section, building and "
                                                         f"warming it up takes about {need:.0f} s"})
            ctx.save("model_path", record)
            continue
        report.progress(f"gpu_check: model_path: building {name}")
        try:
            measure_pipeline(ctx, record, name)
        except Exception as error:  # noqa: BLE001  (one pipeline's failure, out of memory say: the next goes on)
            record["failures"].append({"what": name, "error": f"{type(error).__name__}: {error}",
                                       "traceback": traceback.format_exc()[-3000:]})
            ctx.save("model_path", record)
            report.progress(f"gpu_check: model_path: {name} failed:\n{traceback.format_exc()}")
        release(ctx)


def measure_pipeline(ctx: Context, record: dict[str, Any], name: str) -> None:
    """One pipeline at its sizes, into record["results"]; a set-up at its default size, a frame or two."""
    from pipelines._setups import ANCHORS

    limits = ctx.limits
    if name in ANCHORS:
        limits = {**limits, **{key: min(limits[key], value) for key, value in SETUP_FRAMES.items()}}
    pipeline, build_s = build(ctx, name)
    try:
        if ctx.quick:
            sizes = [quick_size(pipeline)]
        else:
            sizes = [int(pipeline.InputParams().width), *EXTRA_SIZES.get(name, ())]
        image_input = takes_image(name)
        weights = peak_reset(ctx)
        previous = None
        for index, size in enumerate(sizes):
            if previous:  # a warm-up and a few frames, scaled by the pixels
                needed = 3 * (previous["warmup_s"] + previous["seconds"]["median"]) * (size / previous["size"]) ** 2
                if ctx.left() < needed:
                    why = f"{ctx.left():.0f} s left in the section, about {needed:.0f} needed"
                    record["skipped"].append({"what": f"{name} {size}x{size}", "why": why})
                    continue
            params = params_for(pipeline, size)
            frames = [camera_frame(i, size) for i in range(3)] if image_input else [None]
            peak_reset(ctx)
            with Recorder({"unet": pipeline.pipe.unet}, keep_inputs=False) as recorder:
                _, warmup_s = ctx.clock(lambda: pipeline.predict(params, frames[0]))
            counter = iter(range(10**9))
            if ctx.quick and name in ANCHORS:
                times = [warmup_s]
            else:
                times = time_frames(ctx, lambda: pipeline.predict(params, frames[next(counter) % len(frames)]),
                                    limits["frames"], limits["seconds"])
            stats = report.stats(times)
            result = {
                "pipeline": name, "size": size, "steps": getattr(params, "steps", None),
                "strength": getattr(params, "strength", None),
                "guidance_scale": getattr(params, "guidance_scale", None),
                "unet_calls": recorder.count("unet"), "build_s": build_s if index == 0 else None, "warmup_s": warmup_s,
                "seconds": stats, "fps": fps(stats), "frame_seconds": times,
                "weights_bytes": weights, "peak_memory_bytes": peak(ctx),
            }
            record["results"].append(result)
            previous = result
            ctx.save("model_path", record)
            report.progress(f"gpu_check: model_path: {name} {size}x{size}: {stats['median'] * 1000:.1f} ms/frame, "
                            f"{result['fps']:.1f} fps ({len(times)} frames)")
    finally:
        del pipeline


def batching(ctx: Context, record: dict[str, Any]) -> None:
    """img2img, 1 to 8 users' frames as one batch: frames per second in total and per user."""
    size = QUICK_SIZE if ctx.quick else SIZE
    limits = ctx.limits
    record.update(pipeline="img2img", size=size, results=[])
    pipeline, record["build_s"] = build(ctx, "img2img")
    for users in QUICK_USERS if ctx.quick else USERS:
        previous = record["results"][-1] if record["results"] else None
        if previous and ctx.left() < 3 * previous["seconds"]["median"] * users / previous["users"] + 2:
            record["skipped"].append({"what": f"{users} users", "why": f"{ctx.left():.0f} s left in the section"})
            continue
        params = [params_for(pipeline, size, prompt=f"user {i}: {PROMPT}"[:75], seed=i) for i in range(users)]
        frames = [camera_frame(i, size) for i in range(users)]
        _, warmup_s = ctx.clock(lambda: pipeline.predict_batch(params, frames))  # new shapes, new prompts
        times = time_frames(ctx, lambda: pipeline.predict_batch(params, frames), limits["batches"], limits["seconds"])
        stats = report.stats(times)
        result = {"users": users, "warmup_s": warmup_s, "seconds": stats, "batch_seconds": times,
                  "fps_total": users / stats["median"], "fps_per_user": 1.0 / stats["median"]}
        first = record["results"][0] if record["results"] else result
        result["throughput_vs_one"] = result["fps_total"] / first["fps_total"]
        record["results"].append(result)
        ctx.save("batching", record)
        report.progress(f"gpu_check: batching: {users} user(s): {result['fps_total']:.1f} fps in total, "
                        f"{result['fps_per_user']:.1f} per user")
    del pipeline
    release(ctx)


def temporal(ctx: Context, record: dict[str, Any]) -> None:
    """img2img's cost per frame at temporal_consistency 0 and 1, and the memory a stream keeps."""
    from bench import temporal as temporal_bench

    size = QUICK_SIZE if ctx.quick else SIZE
    pipeline, build_s = build(ctx, "img2img")
    record.update(pipeline="img2img", size=size, build_s=build_s)
    # Two frames first: a warm-up (prompt cache, kernels), then one to size the clip to the time there is.
    params, image = temporal_bench.stream_params(pipeline, "img2img", size, 0.0), camera_frame(0, size)
    _, warmup_s = ctx.clock(lambda: pipeline.predict(params, image))
    _, frame_s = ctx.clock(lambda: pipeline.predict(params, image))
    record.update(warmup_s=warmup_s)
    frames = ctx.limits["temporal_frames"]
    settings = len(temporal_bench.SETTINGS)
    affordable = int((ctx.left() - 5) / (1.3 * settings * max(frame_s, 1e-3)))
    if affordable < frames:
        record["skipped"].append({"what": f"{frames - max(3, affordable)} of {frames} frames a stream",
                                  "why": f"{ctx.left():.0f} s left in the section"})
        frames = max(3, affordable)
    clip = temporal_bench.pan_clip(size, frames)
    temporal_bench.prepare_flows(clip)
    result = temporal_bench.run_clip(pipeline, "img2img", clip, size, ctx.clock, None)
    record.update(clip=clip.name, frames=frames, settings={})
    for key, entry in result["settings"].items():
        record["settings"][key] = {
            "temporal_consistency": entry["temporal_consistency"], "seconds": entry["cost"], "fps": fps(entry["cost"]),
            "frame_seconds": entry["seconds"], "cost_ratio": entry["cost_ratio"],
            "cost_ratio_frames": entry["cost_ratio_frames"], "memory_bytes": entry["memory_bytes"],
        }
    record["cost_ratio"] = result["settings"]["1"]["cost_ratio"]
    record["memory_bytes"] = result["settings"]["1"]["memory_bytes"]
    ctx.save("temporal", record)
    if ctx.cuda:
        import torch

        images = [camera_frame(i, size) for i in range(3)]
        for key in ("0", "1"):
            params = temporal_bench.stream_params(pipeline, "img2img", size, float(key))
            memory = pipeline.new_memory()
            release(ctx)
            before = peak_reset(ctx)
            for image in images:
                pipeline.predict(params, image, memory)
            record["settings"][key]["cuda_peak_bytes"] = peak(ctx) - before
            record["settings"][key]["cuda_held_bytes"] = torch.cuda.memory_allocated(ctx.device) - before
            record["settings"][key]["memory_bytes"] = memory.nbytes()
            del memory
        on, off = record["settings"]["1"], record["settings"]["0"]
        record["cuda_peak_delta_bytes"] = on["cuda_peak_bytes"] - off["cuda_peak_bytes"]
        record["cuda_held_bytes"] = record["settings"]["1"]["cuda_held_bytes"]
    else:
        record["cuda_peak_delta_bytes"] = record["cuda_held_bytes"] = None
        record["note"] = "no GPU: the torch.cuda memory figures need one"
    ctx.save("temporal", record)
    del pipeline
    release(ctx)


def serving(ctx: Context, record: dict[str, Any]) -> None:
    """The real server with N users at 30 fps: the full-size random img2img in it, or if that server
    cannot start, the echo model with model_path's measured model time."""
    from bench import serving_path
    from bench.live import run_server

    size = QUICK_SIZE if ctx.quick else SIZE
    users_list = QUICK_USERS if ctx.quick else USERS
    limits = ctx.limits
    per_configuration = limits["serving_s"] + limits["serving_warmup_s"] + 2.0
    record.update(size=size, camera_fps=CAMERA_FPS, results=[])
    common = server_common_args(ctx)
    real = real_server_args(ctx)

    def run_all(server: Any, params: dict[str, Any], delay_ms: float) -> None:
        record["server"] = server.health()
        for users in users_list:
            if ctx.left() < per_configuration + 3:
                record["skipped"].append({"what": f"{users} users", "why": f"{ctx.left():.0f} s left in the section"})
                continue
            report.progress(f"gpu_check: serving: {users} user(s) at {CAMERA_FPS:g} fps, {limits['serving_s']:g} s")
            result = asyncio.run(serving_path.run_configuration(
                server, delay_ms, users, limits["serving_warmup_s"], limits["serving_s"], size,
                serving_path.output_quality(""), params=params, camera_fps=CAMERA_FPS))
            per = result["fps_per_client"]
            record["results"].append({
                "users": users, "camera_fps": CAMERA_FPS, "duration_s": result["duration_s"],
                "fps_total": result["fps_total"], "fps_per_user": per, "latency_ms": result["latency_ms"],
                "sent": result["sent"], "dropped": result["dropped"], "unreadable": result["unreadable"],
                "server_cpu_ms_per_frame": result["server_cpu_ms_per_frame"],
                "codec_ms_per_frame": result["codec_ms_per_frame"], "errors": result["errors"],
            })
            ctx.save("serving", record)
            report.progress(f"gpu_check: serving: {users} user(s): {result['fps_total']:.1f} fps in total, "
                            f"{per['median']:.1f} per user (median), p95 {result['latency_ms']['p95'] or 0:.0f} ms")

    params = {"prompt": PROMPT, "width": size, "height": size}
    startup = max(10.0, ctx.left() - per_configuration - 3)
    started = time.perf_counter()
    try:
        if ctx.early_server is not None:  # --quick: started with the process, ready by now
            context, ctx.early_server = ctx.early_server, None
            record["note"] = "--quick: the server was started with the check's process, beside the other sections"
        else:
            report.progress(f"gpu_check: serving: starting server/main.py {' '.join(real)}")
            context = run_server(*real, startup_timeout=startup)
        server = context.__enter__()
        record["server_startup_s"] = time.perf_counter() - started
    except AssertionError as error:  # it exited or did not start in time
        record["real_model_error"] = str(error)[-3000:]
        report.progress(f"gpu_check: serving: the server with the full-size model did not start: {str(error)[-500:]}")
    else:
        try:
            record["model"] = ("real: img2img with full-size random weights in the server (--pipeline "
                               "bench.full_size_pipeline" + (" --tiny: miniature" if ctx.quick else "") + ")")
            run_all(server, params, 0.0)
        finally:
            context.__exit__(None, None, None)
        return
    delay_ms, source = echo_delay(ctx, size)
    record["model"] = (f"echo (bench/echo_pipeline.py) with {delay_ms:.1f} ms a frame: {source}; the real model's "
                       "server did not start (real_model_error)")
    if ctx.left() < per_configuration + 10:
        record["skipped"].append({"what": "the echo model's run", "why": f"{ctx.left():.0f} s left in the section"})
        raise RuntimeError("the server with the full-size model did not start, and no time is left for the echo model")
    with run_server("--pipeline", "bench.echo_pipeline", *common, startup_timeout=max(10.0, ctx.left() - 5)) as server:
        run_all(server, {"delay_ms": delay_ms, "width": size, "height": size}, delay_ms)


def server_common_args(ctx: Context) -> list[str]:
    users = QUICK_USERS if ctx.quick else USERS
    return ["--device", ctx.device.type, "--dtype", ctx.dtype_name, "--max-users", str(max(users))]


def real_server_args(ctx: Context) -> list[str]:
    return ["--pipeline", "bench.full_size_pipeline", *server_common_args(ctx), *(["--tiny"] if ctx.quick else [])]


class EarlyServer:
    """A server started in a thread now, to be used later as `run_server`'s context is: `__enter__` waits
    for it to be ready (or raises as run_server does), `__exit__` stops it. With --quick, the server's
    start-up (its imports: seconds of CPU) runs beside the other sections on a second core, instead of
    adding to the check's time; on a GPU host it would compete with the sections for the GPU, so there
    the server starts in its own section."""

    def __init__(self, args: list[str], startup_timeout: float) -> None:
        import threading

        self.ready, self.stop = threading.Event(), threading.Event()
        self.server: Any = None
        self.error: BaseException | None = None
        self.startup_timeout = startup_timeout
        self.thread = threading.Thread(target=self._run, args=(args,), name="early-server", daemon=True)
        self.thread.start()

    def _run(self, args: list[str]) -> None:
        from bench.live import run_server

        try:
            with run_server(*args, startup_timeout=self.startup_timeout) as server:
                self.server = server
                self.ready.set()
                self.stop.wait()
        except BaseException as error:  # noqa: BLE001  (handed to the section that uses it)
            self.error = error
        finally:
            self.ready.set()

    def __enter__(self) -> Any:
        self.ready.wait(self.startup_timeout + 15)
        if self.server is None:
            raise self.error if isinstance(self.error, AssertionError) else AssertionError(
                f"the server did not start: {self.error!r}")
        return self.server

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)


def echo_delay(ctx: Context, size: int) -> tuple[float, str]:
    path = ctx.out / "sections" / "model_path.json"
    try:
        results = json.loads(path.read_text()).get("results", [])
    except (OSError, ValueError):
        results = []
    for result in results:
        if result.get("pipeline") == "img2img" and result.get("size") == size and result["seconds"].get("median"):
            return result["seconds"]["median"] * 1000.0, f"img2img's time at {size}x{size} measured by model_path"
    return ECHO_DEFAULT_MS, "assumed (model_path measured no img2img frame at this size)"


def torch_compile(ctx: Context, record: dict[str, Any]) -> None:
    """img2img without and with --torch-compile: compile time apart from the steady frames per second."""
    size = QUICK_SIZE if ctx.quick else SIZE
    limits = ctx.limits
    backend = "eager (--quick)" if ctx.quick else "inductor (torch's default)"
    record.update(pipeline="img2img", size=size, backend=backend)
    images = [camera_frame(i, size) for i in range(3)]
    counter = iter(range(10**9))

    def frame(pipeline: Any, params: Any) -> Callable[[], Any]:
        return lambda: pipeline.predict(params, images[next(counter) % len(images)])

    pipeline, build_s = build(ctx, "img2img")
    params = params_for(pipeline, size)
    _, warmup_s = ctx.clock(frame(pipeline, params))
    times = time_frames(ctx, frame(pipeline, params), limits["frames"], limits["seconds"])
    stats = report.stats(times)
    record["off"] = {"build_s": build_s, "warmup_s": warmup_s, "seconds": stats, "fps": fps(stats),
                     "frame_seconds": times}
    record["on"] = {"status": "compiling: if the section ends here, the compile did not finish in its time"}
    ctx.save("torch_compile", record)
    del pipeline
    release(ctx)

    report.progress("gpu_check: torch_compile: building with --torch-compile; the first frame compiles")
    pipeline, build_s = build(ctx, "img2img", compile_=True)
    params = params_for(pipeline, size)
    on: dict[str, Any] = {"build_s": build_s, "first_frames_s": []}
    for _ in range(3):  # the first compiles; the next show any recompiling
        _, elapsed = ctx.clock(frame(pipeline, params))
        on["first_frames_s"].append(elapsed)
        on["compile_s"] = on["first_frames_s"][0] - stats["median"]
        record["on"] = on
        ctx.save("torch_compile", record)
        report.progress(f"gpu_check: torch_compile: compiled frame {len(on['first_frames_s'])}: {elapsed:.2f} s")
    times = time_frames(ctx, frame(pipeline, params), limits["frames"], limits["seconds"])
    on["seconds"] = report.stats(times)
    on["fps"] = fps(on["seconds"])
    on["frame_seconds"] = times
    record["speedup"] = on["fps"] / record["off"]["fps"] if on["fps"] and record["off"]["fps"] else None
    ctx.save("torch_compile", record)
    del pipeline
    release(ctx)


SECTION_FUNCTIONS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "model_path": model_path, "batching": batching, "temporal": temporal, "serving": serving,
    "torch_compile": torch_compile,
}


# --- the child process ------------------------------------------------------------------------------------


def device_info(device: Any, dtype: Any) -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        "cuda": torch.version.cuda, "diffusers": diffusers.__version__, "torch_threads": torch.get_num_threads(),
        "name": report.cpu_model(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    gpus=torch.cuda.device_count())
    return info


def child_main(args: Any) -> int:
    """Run `args.sections` in order within `args.deadline`, saying on stdout when each starts and ends."""
    import torch

    from pipelines._device import resolve_device, resolve_dtype

    if args.quick:
        torch.set_num_threads(1)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    ctx = Context(args, device, dtype, Clock(device))
    control("device", json.dumps(device_info(device, dtype)))
    if args.quick and "serving" in args.sections and device.type == "cpu":
        ctx.early_server = EarlyServer(real_server_args(ctx), startup_timeout=caps(True)["serving"])
    section_caps, section_minimums = caps(args.quick), minimums(args.quick)
    for name in args.sections:
        left = args.deadline - time.time()
        budget = min(section_caps[name], left)
        if budget < section_minimums[name]:
            ctx.save(name, {"status": "skipped", "budget_s": max(0.0, budget),
                            "reason": f"{max(0.0, left):.0f} s left in the check's budget; it needs at least "
                                      f"{section_minimums[name]:g} s"})
            control("end", name)
            continue
        ctx.section_deadline = time.time() + budget
        control("start", f"{name} {budget:.1f}")
        record: dict[str, Any] = {"status": "running", "budget_s": budget, "what": WHAT[name], "skipped": []}
        ctx.save(name, record)
        started = time.perf_counter()
        try:
            SECTION_FUNCTIONS[name](ctx, record)
            record["status"] = "partial" if record["skipped"] or record.get("failures") else "ok"
        except (Exception, SystemExit) as error:  # noqa: BLE001  (recorded; the next section goes on)
            record["status"] = "failed"
            record["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}"
            report.progress(f"gpu_check: {name} failed:\n{traceback.format_exc()}")
        record["elapsed_s"] = time.perf_counter() - started
        ctx.save(name, record)
        release(ctx)
        control("end", name)
    if ctx.early_server is not None:  # never used (its section was skipped)
        ctx.early_server.__exit__(None, None, None)
    return 0
