"""img2img with full-size random weights, as a server pipeline: `python server/main.py --pipeline
bench.full_size_pipeline` serves the real img2img module (pipelines/img2img.py, unchanged) built on the
full-size architectures of bench/full_size.py (SD1.5 UNet with the LCM guidance embedding, CLIP ViT-L,
TAESD), so the serving path can be measured with the real model's cost on a host with no hub
(bench/gpu_check.py's serving section). With `--tiny` it is the miniature img2img, as
`--pipeline img2img --tiny` is. The output is noise either way: the weights are random.

One addition: each output gets the top-left corner of its input frame, where the serving benchmark's
clients stamp the frame's number (bench/live.py `stamp`), so that they can tell which frame an output
is, as with the echo model (a random model's output keeps nothing of it). A paste of 192x128 pixels:
microseconds beside the model.
"""

from __future__ import annotations

from typing import Any

from bench.live import STAMP_BLOCK, STAMP_COLS, STAMP_ROWS
from pipelines import img2img

STAMP_BOX = (0, 0, STAMP_BLOCK * STAMP_COLS, STAMP_BLOCK * STAMP_ROWS)

MODEL_ID = "full-size random weights (bench/full_size.py), shaped as SimianLuo/LCM_Dreamshaper_v7"
InputParams = img2img.InputParams


class Info(img2img.Info):
    title: str = "Image-to-Image LCM, full-size random weights"
    description: str = "img2img on the full-size architectures with random weights: the real cost, noise for output"


class Pipeline(img2img.Pipeline):
    def __init__(self, config: Any, device: Any, dtype: Any) -> None:
        if config.tiny:
            super().__init__(config, device, dtype)
            return
        from bench.model_path import CASES, build_components, check_full_size, full_size_builders

        case = CASES["img2img"]
        components = build_components(case, True, device)
        # The module's own constructor, every setup step included, on the full-size models: it builds its
        # miniature models through pipelines._tiny's builders, which return these for the call's duration.
        with full_size_builders(components):
            super().__init__(config.model_copy(update={"tiny": True}), device, dtype)
        check_full_size(case, self, components)

    def predict_batch(self, batch: list[Any], images: list[Any], memories: list[Any] | None = None) -> list[Any]:
        outputs = super().predict_batch(batch, images, memories)
        for output, image in zip(outputs, images):
            if image is not None and image.size == output.size:
                output.paste(image.crop(STAMP_BOX).convert(output.mode), STAMP_BOX[:2])
        return outputs
