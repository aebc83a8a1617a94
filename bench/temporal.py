"""Temporal-consistency benchmark: how much a video stream's output flickers, and what steadying it
costs, at `temporal_consistency` 0, 0.5 and 1 (pipelines/_temporal.py: feature bank, latent feedback,
fixed noise), on short clips made in code and on any video files given.

    .venv/bin/python bench/temporal.py                         # img2img, full-size random models, 512x512: 7 to 13 min on 2 CPU cores
    .venv/bin/python bench/temporal.py --frames 8              # the same, shorter: about 5 min
    .venv/bin/python bench/temporal.py --quick                 # miniature models, 256x256, 6 frames: seconds (CI)
    .venv/bin/python bench/temporal.py --real clip.mp4         # the real hub models (a GPU host): the quality

**What it measures.** With random weights it measures the *mechanism*, not the quality: how much
the stream's output steadies when temporal consistency is on, and what that costs per frame. The
outputs are not pictures of anything, so the figures say nothing about how a real model's output
looks. The same command on a GPU host with `--real` (the real models through `pipelines.load(name)`,
no random builders) measures the *quality*: the same figures on real outputs. `--real` is untested
here: this machine has no hub.

What random weights can and cannot show. The cost is real: compute does not depend on the weights'
values, so the full-size random models (the real architectures of bench/full_size.py, built as
bench/model_path.py builds them) give the real per-frame cost of each setting. The flicker is
another matter: with full-size random weights the output does *not follow the input* (default
initialisation shrinks the signal through TAESD's deep encoder and decoder: an output frame is the
same nearly black picture whatever the camera shows, its frame-to-frame difference about 0.03 on
0-255), so there is no flicker to remove and the warp error measures nothing. The script checks this
("response": the outputs' frame difference at 0 over the input's) and does not judge the flicker
target when the output does not follow the input. The miniature models do follow their input:
`--quick --size 512 --frames 16` gives the mechanism's flicker figures on them (never judged: their
attention is close to uniform, so the feature bank hardly changes anything, and their latents do not
respond to sensor noise as a trained TAESD's do).

**Flicker** is the warp error of StreamV2V and StreamDiffusionV2 (their `warp_error.py`): optical
flow between consecutive *input* frames, forward and backward (OpenCV Farneback here, RAFT in the
papers), computed at most at 256x256 and rescaled (Farneback costs about 200 ms a pair at 512x512 on
2 cores); output frame t warped into frame t+1 with `cv2.remap` along the backward flow; the mean
absolute difference on 0-255 to output frame t+1 over the pixels that are not occluded, averaged over
the channels and the clip. Occluded: where the forward-backward check fails, |F_b + F_f(p + F_b)|^2 >
0.01 (|F_b|^2 + |F_f(p + F_b)|^2) + 0.5 (squared magnitudes, as in the original code; taken at frame
t+1's pixels, where the difference is measured), or where the warp reads from outside the frame.
Lower is steadier. The input clip's own warp error is shown too: what a pipeline that copied its
input would score. The plain mean difference between consecutive outputs is reported beside it (no
motion compensation: on a moving clip it counts the motion as flicker).

**Clips** (deterministic): `pan`, a window moving a few pixels a frame across a large textured
picture; `object`, a textured disc moving across a still textured background; `noise`, a still
textured scene with fresh Gaussian sensor noise (sigma 6) in every frame; plus any video files on
the command line (read with OpenCV, scaled and cropped to the size).

**Cost**: the wall time of `pipe.predict(params, image, memory)` per frame, median [min-max] over
each stream's frames but its first (which has no memory yet; the very first also fills the prompt
cache). Each (clip, setting) is a stream of its own: a fresh memory from `pipe.new_memory()`, the same
prompt and seed. The three settings' streams run interleaved frame by frame, in a rotating order, so
that drift in the machine's speed falls on all three alike.

**Memory**: what each stream's `StreamMemory` holds after the clip (`nbytes()`), beside what
`pipeline.memory_bytes(params)` said it would hold, asked before the stream's first frame.

**Targets** (judged per clip; never with `--quick`): warp error at 1 at most 0.7 of that at 0;
cost per frame at 1 at most 1.15 of that at 0.

Run time on the project's 2-core CPU (bfloat16, `--dtype auto`): img2img at 512x512 costs about
2.2 s a frame, so 16 frames x 3 settings x 3 clips is about 144 frames, 5.5 min, plus about a minute
to build the models and a few seconds of optical flow (on 2026-12-01, a slower day for that machine,
4.7 to 5.1 s a frame and 12.6 min in all); the script prints its estimate at the start and a refined
one after the first frames. float32 is about 3.7 times slower.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/temporal.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from bench import report  # noqa: E402
from bench.model_path import CASES, PROMPT, Clock, build_components, build_ours, torch_setup  # noqa: E402

SETTINGS = (0.0, 0.5, 1.0)
DEFAULT_FRAMES = 16
QUICK_FRAMES = 6
DEFAULT_PIPELINES = ("img2img",)
SEED = 2159232
FLOW_MAX_SIDE = 256  # optical flow at most at 256x256, rescaled to the frame size
SENSOR_NOISE = 6.0
TARGET_WARP_RATIO = 0.7  # warp error at 1 / warp error at 0
TARGET_COST_RATIO = 1.15  # frame time at 1 / frame time at 0
# Output frame difference at 0 over the input's: below this the output does not follow the input (full-size
# random weights: the random TAESD and UNet wash the input out), so the warp error has nothing to measure.
MIN_RESPONSE = 0.1
# Seconds a frame at 512x512 on the project's 2-core CPU (docs/benchmarks.md, model path): for the estimate.
CPU_SECONDS_512 = {
    ("img2img", "bfloat16"): 2.15, ("img2img", "float32"): 8.05,
    ("img2img_sd_turbo", "bfloat16"): 1.20, ("img2img_sd_turbo", "float32"): 4.40,
    ("controlnet_canny", "bfloat16"): 3.15, ("controlnet_canny", "float32"): 10.71,
}
BUILD_SECONDS = 60.0  # building one pipeline's full-size random models on that CPU

MECHANISM_NOTE = (
    "With random weights these figures measure the mechanism: how much the stream's output steadies with "
    "temporal consistency on, and what it costs per frame; the outputs are not pictures, so they say nothing "
    "of how a real model's output looks. The same command with --real on a GPU host (the real models) "
    "measures the quality."
)
DEGENERATE_NOTE = (
    "Note: on the clips marked 'not judged' the output does not follow the input (response below "
    f"{MIN_RESPONSE:g}): full-size random weights wash the camera out (the same nearly black frame whatever "
    "it shows), so there is no flicker to remove and the warp error measures nothing there; the costs stand. "
    "Flicker needs a model whose output follows its input: --real on a GPU host, or for the mechanism alone "
    "the miniature models, --quick --size 512 --frames 16."
)


# --- clips ------------------------------------------------------------------------------------------


@dataclass
class Clip:
    name: str
    description: str
    frames: list[np.ndarray]  # HxWx3 uint8 RGB, all of the benchmark's size
    flows: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per pair: backward flow, valid mask
    input_warp_error: float = math.nan
    input_frame_difference: float = math.nan


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A textured picture, HxWx3 uint8: colour noise at three scales (texture for the optical flow)
    and filled shapes (edges)."""
    import cv2

    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 128.0, dtype=np.float32)
    for cell, amplitude in ((128, 70.0), (32, 40.0), (8, 25.0)):
        small = rng.uniform(-1, 1, (max(2, height // cell), max(2, width // cell), 3)).astype(np.float32)
        image += amplitude * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    shapes = max(6, height * width // (96 * 96))
    for _ in range(shapes):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        a, b = int(rng.integers(6, max(7, min(height, width) // 10))), int(rng.integers(6, max(7, min(height, width) // 10)))
        colour = tuple(float(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.ellipse(image, (x, y), (a, b), float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(image, (x - a, y - b), (x + a, y + b), colour, -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def pan_clip(size: int, frames: int) -> Clip:
    """A window moving (4, 2) pixels a frame (at 512x512; scaled with the size) across a larger picture."""
    dx, dy = max(1, round(4 * size / 512)), max(1, round(2 * size / 512))
    canvas = texture(size + dy * frames + 1, size + dx * frames + 1, seed=1)
    images = [canvas[t * dy : t * dy + size, t * dx : t * dx + size].copy() for t in range(frames)]
    return Clip("pan", f"camera panning {dx},{dy} px/frame over a textured picture", images)


def object_clip(size: int, frames: int) -> Clip:
    """A textured disc moving 8 pixels a frame (at 512x512) over a still textured background, to and fro."""
    import cv2

    background = texture(size, size, seed=2)
    radius = size // 8
    disc = texture(2 * radius, 2 * radius, seed=3)
    mask = np.zeros((2 * radius, 2 * radius), np.uint8)
    cv2.circle(mask, (radius, radius), radius - 1, 1, -1)
    speed = max(1, round(8 * size / 512))
    span = size - 2 * radius - 2 * (size // 16)  # the disc's travel, to and fro
    images = []
    for t in range(frames):
        travel = (t * speed) % (2 * span)
        offset = travel if travel <= span else 2 * span - travel
        x0 = size // 16 + offset
        y0 = size // 2 - radius + round(0.25 * (offset - span / 2))
        image = background.copy()
        window = image[y0 : y0 + 2 * radius, x0 : x0 + 2 * radius]
        window[mask > 0] = disc[mask > 0]
        images.append(image)
    return Clip("object", f"textured disc moving {speed} px/frame over a still background", images)


def noise_clip(size: int, frames: int) -> Clip:
    """A still textured scene with fresh Gaussian sensor noise in every frame."""
    scene = texture(size, size, seed=4).astype(np.float32)
    rng = np.random.default_rng(5)
    images = [np.clip(scene + rng.normal(0, SENSOR_NOISE, scene.shape), 0, 255).astype(np.uint8) for _ in range(frames)]
    return Clip("noise", f"still scene, fresh sensor noise (sigma {SENSOR_NOISE:g}) every frame", images)


def video_clip(path: str, size: int, frames: int) -> Clip:
    """The first `frames` frames of a video file, scaled so the shorter side is `size`, centre-cropped."""
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise SystemExit(f"temporal: cannot open video {path!r}")
    images = []
    try:
        while len(images) < frames:
            ok, bgr = capture.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            scale = size / min(h, w)
            resized = cv2.resize(bgr, (max(size, round(w * scale)), max(size, round(h * scale))), interpolation=cv2.INTER_AREA)
            h, w = resized.shape[:2]
            top, left = (h - size) // 2, (w - size) // 2
            images.append(cv2.cvtColor(resized[top : top + size, left : left + size], cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if len(images) < 2:
        raise SystemExit(f"temporal: {path!r} gave {len(images)} frame(s); at least 2 are needed")
    return Clip(Path(path).name, f"video file {path} ({len(images)} frames)", images)


# --- flicker metric ---------------------------------------------------------------------------------


def optical_flows(a: np.ndarray, b: np.ndarray, max_side: int = FLOW_MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Farneback flow a -> b (forward) and b -> a (backward), HxWx2 float32 in pixels of the full frame,
    computed at most at max_side x max_side and rescaled."""
    import cv2

    h, w = a.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = (max(8, round(w * scale)), max(8, round(h * scale)))

    def gray(image: np.ndarray) -> np.ndarray:
        if scale < 1.0:
            image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)

    ga, gb = gray(a), gray(b)
    options = dict(pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    flows = []
    for first, second in ((ga, gb), (gb, ga)):
        flow = cv2.calcOpticalFlowFarneback(first, second, None, **options)
        if scale < 1.0:
            sw, sh = small
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
            flow[..., 0] *= w / sw
            flow[..., 1] *= h / sh
        flows.append(flow.astype(np.float32))
    return flows[0], flows[1]


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`image` sampled at p + flow(p) for every pixel p (cv2.remap, bilinear), and where that lies inside."""
    import cv2

    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
    warped = cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def valid_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Frame t+1's pixels that are not occluded (forward-backward check) and whose warp stays inside."""
    forward_at, inside = warp(forward, backward)  # F_f at p + F_b(p)
    mismatch = ((backward + forward_at) ** 2).sum(-1)
    magnitudes = (backward**2).sum(-1) + (forward_at**2).sum(-1)
    return inside & (mismatch <= 0.01 * magnitudes + 0.5)


def prepare_flows(clip: Clip) -> None:
    """The backward flows and valid masks of the clip's consecutive input frames; its own scores."""
    clip.flows = []
    for a, b in zip(clip.frames, clip.frames[1:]):
        forward, backward = optical_flows(a, b)
        clip.flows.append((backward, valid_mask(forward, backward)))
    clip.input_warp_error = warp_error(clip.frames, clip.flows)["mean"]
    clip.input_frame_difference = frame_difference(clip.frames)


def warp_error(outputs: list[np.ndarray], flows: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Mean absolute difference (0-255) between output t warped into frame t+1 and output t+1, over
    valid pixels and channels; per pair and its mean over the clip (pairs with no valid pixel skipped)."""
    pairs = []
    for (backward, valid), a, b in zip(flows, outputs, outputs[1:]):
        if not valid.any():
            pairs.append(math.nan)
            continue
        warped, _ = warp(a.astype(np.float32), backward)
        pairs.append(float(np.abs(warped - b.astype(np.float32))[valid].mean()))
    finite = [p for p in pairs if not math.isnan(p)]
    valid_share = float(np.mean([valid.mean() for _, valid in flows])) if flows else math.nan
    return {"mean": float(np.mean(finite)) if finite else math.nan, "pairs": pairs, "valid_share": valid_share}


def frame_difference(outputs: list[np.ndarray]) -> float:
    """Mean absolute difference (0-255) between consecutive frames, no motion compensation."""
    return float(np.mean([np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for a, b in zip(outputs, outputs[1:])]))


# --- streams ------------------------------------------------------------------------------------------


def stream_params(pipeline: Any, name: str, size: int, temporal: float) -> Any:
    values: dict[str, Any] = {"prompt": PROMPT, "seed": SEED, "width": size, "height": size,
                              "temporal_consistency": temporal}
    if name in CASES:  # the model-path benchmark's settings (img2img: 4 steps at strength 0.5, 2 UNet calls)
        values.update(steps=CASES[name].steps, strength=CASES[name].strength)
    fields = pipeline.InputParams.model_fields
    if "temporal_consistency" not in fields:
        raise SystemExit(f"temporal: pipeline {name} has no temporal_consistency parameter")
    return pipeline.InputParams(**{key: value for key, value in values.items() if key in fields})


def run_clip(pipeline: Any, name: str, clip: Clip, size: int, clock: Clock, save: Path | None,
             on_frame: Any = None) -> dict[str, Any]:
    """One stream per setting over the clip, interleaved frame by frame; outputs, times and scores."""
    from PIL import Image

    params = {s: stream_params(pipeline, name, size, s) for s in SETTINGS}
    memories = {s: pipeline.new_memory() for s in SETTINGS}
    # what the pipeline says each stream will hold, asked before its first frame
    estimates = {s: pipeline.memory_bytes(params[s]) if hasattr(pipeline, "memory_bytes") else None for s in SETTINGS}
    outputs: dict[float, list[np.ndarray]] = {s: [] for s in SETTINGS}
    times: dict[float, list[float]] = {s: [] for s in SETTINGS}
    for t, frame in enumerate(clip.frames):
        image = Image.fromarray(frame)
        order = SETTINGS[t % len(SETTINGS):] + SETTINGS[: t % len(SETTINGS)]
        for s in order:
            output, seconds = clock(lambda: pipeline.predict(params[s], image, memories[s]))
            outputs[s].append(np.asarray(output.convert("RGB")))
            times[s].append(seconds)
        report.progress(f"  {name} {clip.name} frame {t + 1}/{len(clip.frames)}: "
                        + ", ".join(f"tc {s:g} {times[s][-1]:.2f} s" for s in SETTINGS))
        if on_frame:
            on_frame(t, {s: times[s][-1] for s in SETTINGS})
    settings = {}
    for s in SETTINGS:
        score = warp_error(outputs[s], clip.flows)
        settings[f"{s:g}"] = {
            "temporal_consistency": s,
            "warp_error": score["mean"],
            "warp_error_pairs": score["pairs"],
            "frame_difference": frame_difference(outputs[s]),
            "seconds": times[s],
            "cost": report.stats(times[s][1:]),
            "memory_bytes": memories[s].nbytes(),
            "memory_estimate": estimates[s],
            "scene_cuts": getattr(memories[s], "scene_cuts", 0),
        }
        if save is not None:
            folder = save / name / clip.name / f"tc{s:g}"
            folder.mkdir(parents=True, exist_ok=True)
            for t, output in enumerate(outputs[s]):
                Image.fromarray(output).save(folder / f"{t:03d}.png")
    base = settings["0"]
    response = base["frame_difference"] / clip.input_frame_difference if clip.input_frame_difference else math.nan
    for key, entry in settings.items():
        entry["warp_error_ratio"] = entry["warp_error"] / base["warp_error"] if base["warp_error"] else math.nan
        entry["cost_ratio"] = (entry["cost"]["median"] / base["cost"]["median"]
                               if entry["cost"]["n"] and base["cost"]["n"] else math.nan)
        # frame by frame: the ratio of the three streams' times for the same input frame
        pairs = [a / b for a, b in zip(entry["seconds"][1:], base["seconds"][1:])]
        entry["cost_ratio_frames"] = report.stats(pairs)
    return {"pipeline": name, "clip": clip.name, "size": size, "frames": len(clip.frames),
            "input_warp_error": clip.input_warp_error, "input_frame_difference": clip.input_frame_difference,
            "response": response,
            "valid_share": warp_error(clip.frames, clip.flows)["valid_share"], "settings": settings}


# --- report -----------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _span(s: dict[str, Any], digits: int = 3) -> str:
    if not s["n"]:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def flicker_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        st = r["settings"]
        rows.append([r["pipeline"], r["clip"], _f(r["input_warp_error"]), *(_f(st[f"{s:g}"]["warp_error"]) for s in SETTINGS),
                     _f(st["0.5"]["warp_error_ratio"]), f"**{_f(st['1']['warp_error_ratio'])}**",
                     f"{100 * r['valid_share']:.0f} %", _f(r["response"], 3)])
    headers = ["pipeline", "clip", "input", "tc 0", "tc 0.5", "tc 1", "0.5 / 0", "1 / 0", "pixels compared", "response"]
    return (report.table(headers, rows, "llrrrrrrrr")
            + "\n\nwarp error: mean |warp(output t) - output t+1| on 0-255 over unoccluded pixels (Farneback flow of "
              "the input clip); lower is steadier. input: the input clip's own score. response: the outputs' frame "
              f"difference at 0 over the input's; below {MIN_RESPONSE:g} the output does not follow the input and the "
              "warp error has no flicker to measure (not judged)")


def difference_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        st = r["settings"]
        rows.append([r["pipeline"], r["clip"], _f(r["input_frame_difference"]),
                     *(_f(st[f"{s:g}"]["frame_difference"]) for s in SETTINGS)])
    return (report.table(["pipeline", "clip", "input", "tc 0", "tc 0.5", "tc 1"], rows, "llrrrr")
            + "\n\nmean |frame t+1 - frame t| on 0-255, no motion compensation (counts motion as change)")


def cost_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        st = r["settings"]
        rows.append([r["pipeline"], r["clip"], *(_span(st[f"{s:g}"]["cost"]) for s in SETTINGS),
                     _span(st["0.5"]["cost_ratio_frames"], 2), f"**{_f(st['1']['cost_ratio'])}**",
                     _span(st["1"]["cost_ratio_frames"], 2), f"{st['1']['memory_bytes'] / 2**20:.1f}",
                     "-" if st["1"]["memory_estimate"] is None else f"{st['1']['memory_estimate'] / 2**20:.1f}"])
    headers = ["pipeline", "clip", "tc 0 s/frame", "tc 0.5 s/frame", "tc 1 s/frame", "0.5 / 0 by frame",
               "1 / 0 (medians)", "1 / 0 by frame", "memory MiB (tc 1)", "said before MiB"]
    return (report.table(headers, rows, "llrrrrrrrr")
            + "\n\nseconds of pipe.predict per frame, median [min-max] over each stream's frames but its first; "
              "'by frame': ratio of the two streams' times on the same input frame; memory: the stream's StreamMemory "
              "after the clip; said before: pipeline.memory_bytes(params), asked before the stream's first frame")


def targets(results: list[dict[str, Any]], quick: bool) -> tuple[str, list[dict[str, Any]]]:
    checks = []
    for r in results:
        st = r["settings"]
        checks.append({"target": f"warp error at 1 <= {TARGET_WARP_RATIO:g} x at 0", "pipeline": r["pipeline"],
                       "clip": r["clip"], "measured": st["1"]["warp_error_ratio"],
                       "follows_input": not (r["response"] < MIN_RESPONSE)})
        checks.append({"target": f"cost at 1 <= {TARGET_COST_RATIO:g} x at 0", "pipeline": r["pipeline"],
                       "clip": r["clip"], "measured": st["1"]["cost_ratio"]})
    rows = []
    for check in checks:
        limit = TARGET_WARP_RATIO if check["target"].startswith("warp") else TARGET_COST_RATIO
        value = check["measured"]
        check["met"] = None if value is None or math.isnan(value) else bool(value <= limit)
        if quick:
            check["verdict"] = "not judged (--quick: miniature models)"
        elif not check.get("follows_input", True):
            check["verdict"] = "not judged (the output does not follow the input)"
        elif check["met"] is None:
            check["verdict"] = "not measured"
        else:
            check["verdict"] = "met" if check["met"] else "MISSED"
        rows.append([check["target"], check["pipeline"], check["clip"], _f(value), check["verdict"]])
    return report.table(["target", "pipeline", "clip", "measured", "verdict"], rows, "lllrl"), checks


# --- main ---------------------------------------------------------------------------------------------


def _list(values: list[str]) -> list[str]:
    return [item for value in values for item in value.split(",") if item]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Flicker (warp error) and cost per frame at temporal_consistency 0, 0.5 and 1. With the default "
                    "full-size random-weight models this measures the mechanism; with --real (a GPU host) the quality.",
    )
    parser.add_argument("videos", nargs="*", metavar="VIDEO", help="video files to add to the made-up clips")
    parser.add_argument("--pipelines", nargs="+", default=[",".join(DEFAULT_PIPELINES)], metavar="NAME",
                        help="comma- or space-separated; default img2img (full-size random models: "
                             f"{', '.join(CASES)}; --quick and --real: any image pipeline)")
    parser.add_argument("--size", type=int, default=None, help="square frame size; default 512 (--quick: 256)")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"frames per clip; default {DEFAULT_FRAMES} (--quick: {QUICK_FRAMES})")
    parser.add_argument("--clips", default="pan,object,noise", help="made-up clips to run, of pan,object,noise "
                                                                    "(empty: only the video files)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: the server's choice (float16 on GPUs, bfloat16 on CPUs with native bf16, else float32)")
    parser.add_argument("--device", default="auto", help="auto (the server's choice), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; default torch's choice (--quick: 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="miniature models at 256x256, few frames, 1 thread: seconds (CI)")
    mode.add_argument("--real", action="store_true",
                      help="the real models through pipelines.load(name) (hub or cache; a GPU host): measures the quality")
    parser.add_argument("--save", metavar="DIR", help="also write every output frame as PNG under DIR/pipeline/clip/tcS/")
    parser.add_argument("--json", metavar="OUT", help="also write everything, every frame's figures, as JSON to OUT")
    args = parser.parse_args(argv)
    args.pipelines = _list(args.pipelines)
    import pipelines

    known = pipelines.available()
    unknown = [name for name in args.pipelines if name not in known]
    if unknown:
        parser.error(f"unknown pipeline(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if not (args.quick or args.real):
        missing = [name for name in args.pipelines if name not in CASES]
        if missing:
            parser.error(f"no full-size random models for {', '.join(missing)} (bench/full_size.py has {', '.join(CASES)}); "
                         "use --quick or --real")
    args.size = args.size if args.size is not None else (256 if args.quick else 512)
    if args.size % 8 or not 256 <= args.size <= 1024:
        parser.error("--size: a multiple of 8 from 256 to 1024 (the pipelines' bounds)")
    args.frames = args.frames if args.frames is not None else (QUICK_FRAMES if args.quick else DEFAULT_FRAMES)
    if args.frames < 3:
        parser.error("--frames: at least 3 (the first frame of each stream is not timed)")
    args.clips = _list([args.clips])
    bad = [c for c in args.clips if c not in ("pan", "object", "noise")]
    if bad:
        parser.error(f"--clips: unknown {', '.join(bad)}; choose from pan, object, noise")
    if not args.clips and not args.videos:
        parser.error("nothing to run: no clips and no video files")
    if args.threads is None:
        args.threads = 1 if args.quick else 0
    return args


def make_clips(args: argparse.Namespace) -> list[Clip]:
    makers = {"pan": pan_clip, "object": object_clip, "noise": noise_clip}
    clips = [makers[name](args.size, args.frames) for name in args.clips]
    clips += [video_clip(path, args.size, args.frames) for path in args.videos]
    for clip in clips:
        prepare_flows(clip)
    return clips


def build_pipeline(name: str, args: argparse.Namespace, device: Any, dtype: Any) -> Any:
    import pipelines

    if args.quick:
        return pipelines.load(name, device=str(device), dtype=str(dtype).removeprefix("torch."), tiny=True)
    if args.real:
        try:
            return pipelines.load(name, device=str(device), dtype=str(dtype).removeprefix("torch."))
        except pipelines.ModelLoadError as error:
            raise SystemExit(f"temporal: --real: {name}: {error}") from None
    case = CASES[name]
    return build_ours(case, build_components(case, True), True, device, dtype, False)


def estimate_seconds(args: argparse.Namespace, dtype: str, device: Any, clips: int) -> float | None:
    if args.quick or args.real or device.type != "cpu":
        return None
    total = 0.0
    for name in args.pipelines:
        per_frame = CPU_SECONDS_512.get((name, dtype))
        if per_frame is None:
            return None
        total += BUILD_SECONDS + 1.05 * per_frame * (args.size / 512) ** 2 * args.frames * len(SETTINGS) * clips
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    device, dtype, clock, env = torch_setup(args)
    dtype_name = str(dtype).removeprefix("torch.")
    models = ("miniature (--quick)" if args.quick else "real (--real)" if args.real else "full-size, random weights")
    clips = make_clips(args)
    settings = {
        "models": models,
        "pipelines": args.pipelines,
        "device": device.type if device.index is None else str(device),
        "dtype": dtype_name,
        "size": f"{args.size}x{args.size}",
        "frames per clip": args.frames,
        "temporal_consistency": [f"{s:g}" for s in SETTINGS],
        "seed": SEED,
        "flow": f"Farneback at {min(args.size, FLOW_MAX_SIDE)}px",
        "timer": "CUDA events" if clock.cuda else "perf_counter",
    }
    frames_total = args.frames * len(SETTINGS) * len(clips) * len(args.pipelines)
    estimate = estimate_seconds(args, dtype_name, device, len(clips))
    report.progress(
        f"temporal: {', '.join(args.pipelines)} ({models}) at {args.size}x{args.size} on {device}, {dtype_name}; "
        f"{len(clips)} clip(s) x {args.frames} frames x {len(SETTINGS)} settings = {frames_total} frames"
        + (f"; estimated run time {estimate / 60:.1f} min" if estimate else "")
    )
    results = []
    for name in args.pipelines:
        report.progress(f"{name}: building models")
        build_started = time.perf_counter()
        pipeline = build_pipeline(name, args, device, dtype)
        report.progress(f"{name}: built in {time.perf_counter() - build_started:.1f} s")
        done_frames = [0]

        def on_frame(t: int, times: dict[float, float]) -> None:
            done_frames[0] += 1
            if done_frames[0] == 2:  # the second frame: memory in use, prompt cache filled
                per_round = sum(times.values())
                left = per_round * (args.frames * len(clips) - 2)
                report.progress(f"{name}: about {left / 60:.1f} min left for this pipeline "
                                f"({per_round:.1f} s per frame of the three streams)")

        for clip in clips:
            results.append(run_clip(pipeline, name, clip, args.size, clock, Path(args.save) if args.save else None,
                                    on_frame))
        del pipeline
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    clip_lines = "\n".join(f"- {clip.name}: {clip.description}" for clip in clips)
    print(f"\n{MECHANISM_NOTE}" if not args.real else
          "\nReal models (--real): these figures measure the quality of the stream's temporal consistency.")
    report.print_figure("Temporal consistency: flicker (warp error)", env, settings,
                        f"clips:\n{clip_lines}\n\n{flicker_table(results)}")
    report.print_figure("Temporal consistency: frame difference", env, settings, difference_table(results))
    report.print_figure("Temporal consistency: cost per frame", env, settings, cost_table(results))
    target_text, checks = targets(results, args.quick)
    report.print_figure("Temporal consistency: targets", env, settings, target_text)
    if any(not check.get("follows_input", True) for check in checks):
        print(f"\n{DEGENERATE_NOTE}")
    report.finish(
        "temporal", started, env, args.json, settings=settings, prompt=PROMPT,
        note="real models" if args.real else MECHANISM_NOTE,
        clips=[{"name": c.name, "description": c.description, "frames": len(c.frames)} for c in clips],
        results=results, targets=checks,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
