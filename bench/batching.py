"""Does batching pay on this machine? Full-size img2img (random weights) in the server's dtype: two
frames as one batch (`predict_batch`) against the same two frames one by one (`predict`).

    .venv/bin/python bench/batching.py            # about 3 minutes on the 2-core CPU machine
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from bench.model_path import CASES, build_components, build_ours  # noqa: E402
from pipelines._device import resolve_device, resolve_dtype  # noqa: E402


def main() -> None:
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    case = CASES["img2img"]
    pipe = build_ours(case, build_components(case, True), True, device, dtype, False)
    for size in (256, 512):
        frames = [Image.new("RGB", (size, size), (40 * i, 90, 160)) for i in range(2)]
        params = [pipe.InputParams(width=size, height=size, seed=i, prompt=f"a portrait number {i}") for i in range(2)]
        pipe.predict_batch(params, frames)  # warm-up
        single, batch = [], []
        for _ in range(3):
            started = time.perf_counter()
            for one, frame in zip(params, frames):
                pipe.predict(one, frame)
            single.append(time.perf_counter() - started)
            started = time.perf_counter()
            pipe.predict_batch(params, frames)
            batch.append(time.perf_counter() - started)
        one_by_one, together = statistics.median(single), statistics.median(batch)
        print(
            f"img2img {size}x{size} on {device}, {str(dtype).removeprefix('torch.')}: two frames one by one "
            f"{one_by_one:.2f} s, as one batch {together:.2f} s: throughput x{one_by_one / together:.2f}"
        )


if __name__ == "__main__":
    main()
