"""Residual guidance against CFG: frames per second and UNet evaluations of one set-up's image to
image with guidance off (1.0), full CFG, and StreamDiffusion's self-negative and one-time negative
(pipelines/_denoise.py), on full-size random SD 1.5 weights (bench/full_size.py: no hub).

    .venv/bin/python bench/residual_guidance.py                 # 256 px, 3 frames a mode: about 2 min on 2 CPU cores
    .venv/bin/python bench/residual_guidance.py --size 512 --frames 5 --device cuda --dtype float16
    .venv/bin/python bench/residual_guidance.py --quick         # miniature models: seconds (the suite)

The modes take turns frame by frame, so a machine that slows down slows them alike; each mode's
first frame is a warm-up. The set-up is SD 1.5 with no accelerator (Euler, CFG at 5), 4 steps at
strength 0.5: two denoising steps a frame.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MODES = {"no guidance": ("full", 1.0), "full CFG": ("full", 5.0), "self-negative": ("self", 5.0),
         "one-time negative": ("initialize", 5.0)}


def build(quick: bool, device: Any, dtype: Any) -> Any:
    import pipelines
    from pipelines import _tiny as tiny
    from pipelines._setups import Choices

    module = pipelines.load_module("setup", Choices(base="sd15", accelerator="none"))
    options = pipelines.ModelOptions(tiny=True)
    if quick:
        return module.Pipeline(options, device, dtype)
    from bench import full_size

    components = full_size.sd15(lcm=False)
    taesd = full_size.taesd()
    saved = tiny.tiny_sd15, tiny.tiny_taesd
    tiny.tiny_sd15 = lambda *args, **kwargs: dict(components)  # the set-up builds on these, unchanged otherwise
    tiny.tiny_taesd = lambda *args, **kwargs: taesd
    try:
        return module.Pipeline(options, device, dtype)
    finally:
        tiny.tiny_sd15, tiny.tiny_taesd = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=3, help="measured frames a mode (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true", help="miniature models, one frame a mode")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    frames = 1 if args.quick else args.frames
    pipe = build(args.quick, device, dtype)
    rows = {name: 0 for name in MODES}
    times: dict[str, list[float]] = {name: [] for name in MODES}

    def count(module: Any, inputs: tuple, kwargs: dict) -> None:
        rows[current] += len(kwargs.get("sample", inputs[0] if inputs else None))

    handle = pipe.pipe.unet.register_forward_pre_hook(count, with_kwargs=True)
    camera = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    for frame in range(frames + 1):
        for current, (mode, guidance) in MODES.items():
            params = pipe.InputParams(prompt="a watercolour fox", negative_prompt="blurry", seed=1, steps=4, strength=0.5,
                                      guidance_scale=guidance, guidance_mode=mode, width=args.size, height=args.size)
            if frame == 0:
                pipe.predict(params, camera)  # warm-up (and the prompt cache)
                rows[current] = 0
                continue
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            pipe.predict(params, camera)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[current].append(time.perf_counter() - started)
    handle.remove()
    base = statistics.median(times["no guidance"])
    results = []
    print(f"| mode | UNet evaluations a frame | ms a frame (median) | fps | vs no guidance |")
    print("|---|---|---|---|---|")
    for name in MODES:
        median = statistics.median(times[name])
        result = {"mode": name, "unet_rows_per_frame": rows[name] / frames, "ms": median * 1000, "fps": 1 / median,
                  "over_no_guidance": median / base}
        results.append(result)
        print(f"| {name} | {result['unet_rows_per_frame']:g} | {result['ms']:.0f} | {result['fps']:.2f} | {result['over_no_guidance']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "device": args.device, "dtype": args.dtype,
                                         "quick": args.quick, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
