"""Depth maps of camera frames, as the conditioning image of depth ControlNets.

The whole batch is preprocessed as one tensor on the model's device (no PIL, no per-frame loop): at
camera rates a per-frame HF image processor call (PIL resize on the CPU, a host round trip) costs more
than the depth model itself. The preprocessing reproduces the model's `DPTImageProcessor` settings
(size, aspect rule, multiple, resample, mean/std) from its preprocessor_config.json, so the model sees
what it was trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForDepthEstimation,
    DepthAnythingConfig,
    Dinov2Config,
    DPTConfig,
    PreTrainedModel,
    Swinv2Config,
)

from pipelines._base import ModelLoadError, ModelMismatch, ModelUnavailable
from pipelines._loading import ensure_hub_model
from pipelines._tiny import _seeded

log = logging.getLogger(__name__)

DEPTH_ANYTHING_ID = "LiheYoung/depth-anything-small-hf"  # used with SD 1.5 depth ControlNets
DPT_ID = "Intel/dpt-swinv2-base-384"  # used with the SDXL depth ControlNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # Depth Anything's processor
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # DPTImageProcessor's defaults, which Intel's DPT checkpoints were saved with

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's resample codes in preprocessor_config.json


@dataclass(frozen=True)
class Preprocessing:
    """What the model's image processor does to a frame, as numbers (DPTImageProcessor's meaning)."""

    height: int
    width: int
    keep_aspect_ratio: bool = False  # scale both sides by the factor nearer 1 (HF's rule), else stretch
    multiple: int = 1  # each side rounded to a multiple of this (14: Depth Anything's patch size)
    mode: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The model's input size for a frame of height x width: DPTImageProcessor's resize rule."""
        scale_h, scale_w = self.height / height, self.width / width
        if self.keep_aspect_ratio:  # "scale as little as possible"
            scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        return _to_multiple(scale_h * height, self.multiple), _to_multiple(scale_w * width, self.multiple)


def _to_multiple(value: float, multiple: int) -> int:
    # DPTImageProcessor's constrain_to_multiple_of (Python's round: halves go to even, as there), but never 0.
    return max(round(value / multiple), 1) * multiple


class DepthEstimator:
    """Batched depth maps as ControlNet conditioning, on the model's device."""

    def __init__(self, model: PreTrainedModel, preprocessing: Preprocessing) -> None:
        self.model = model.eval()
        self.preprocessing = preprocessing
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        shape = (1, -1, 1, 1)
        self._mean = torch.tensor(preprocessing.mean, device=self.device).view(shape)
        self._std = torch.tensor(preprocessing.std, device=self.device).view(shape)
        # Metric models (Depth Anything "metric") predict depth, far = large; ControlNets want near = bright.
        self._metric = getattr(model.config, "depth_estimation_type", "relative") == "metric"

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: Nx3xHxW float in [0, 1] (RGB) on any device -> Nx3xHxW in [0, 1] on the same device and
        dtype as the input: each frame's depth (near = bright, as these models predict inverse depth / disparity),
        min-max normalised per frame, repeated on 3 channels, resized back to HxW."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected Nx3xHxW frames, got shape {tuple(frames.shape)}")
        height, width = frames.shape[-2:]
        pixels = self.pixel_values(frames)
        depth = self.model(pixel_values=pixels.to(self.dtype)).predicted_depth.float()
        if self._metric:
            depth = 1 / depth.clamp_min(1e-3)
        depth = F.interpolate(depth.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
        low = depth.amin(dim=(2, 3), keepdim=True)
        high = depth.amax(dim=(2, 3), keepdim=True)
        depth = (depth - low) / (high - low).clamp_min(1e-6)  # a flat map gives black, not NaN
        return depth.expand(-1, 3, -1, -1).to(device=frames.device, dtype=frames.dtype)

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """The model's float32 input for a batch of [0, 1] frames: resized and normalised, on its device."""
        pre = self.preprocessing
        frames = frames.to(self.device, torch.float32)
        size = pre.input_size(*frames.shape[-2:])
        if size != tuple(frames.shape[-2:]):
            # antialias=True: torch's bicubic/bilinear then use PIL's filters, which the processor uses
            # (and downscaling a 1080p camera frame does not alias).
            smooth = pre.mode != "nearest"
            frames = F.interpolate(frames, size=size, mode=pre.mode, antialias=smooth, align_corners=None)
            frames = frames.clamp(0, 1)  # bicubic overshoots; PIL clips to 0-255
        return (frames - self._mean) / self._std


def load_depth_estimator(model_id: str, *, tiny: bool, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
    """model_id: a hub id or a local folder (save_pretrained layout of a transformers depth model, any
    AutoModelForDepthEstimation architecture: Depth Anything (v1/v2), DPT incl. DPT-SwinV2). tiny=True builds a
    miniature randomly initialised model of the same architecture as `model_id` names (depth-anything vs dpt
    chosen from the id: 'dpt' in the id -> DPT with a Swinv2 backbone as Intel/dpt-swinv2-base-384 has, else
    Depth Anything with a Dinov2 backbone), deterministic (seeded, without disturbing the caller's RNG) and
    tiny: it runs in milliseconds on CPU."""
    if tiny:
        model, processor = tiny_depth_model(model_id), {}
    else:
        model = _load_model(model_id, dtype)
        processor = _processor_config(model_id)
    model = torch.nn.Module.to(model, device=device, dtype=dtype)
    return DepthEstimator(model, preprocessing_for(model.config, processor))


def _load_model(model_id: str, dtype: torch.dtype) -> PreTrainedModel:
    path = Path(model_id).expanduser()
    if not path.is_dir():
        # A hub id is "name" or "owner/name"; anything else that is not a folder is a path that is not there.
        if path.exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
            raise ModelUnavailable(
                f"Depth model {model_id!r}: expected a hub id or a folder saved with save_pretrained "
                "(config.json and weights), and found no such folder."
            )
        ensure_hub_model(model_id)
    elif not (path / "config.json").is_file():
        raise ModelMismatch(
            f"Depth model folder {model_id!r} has no config.json: expected a transformers depth model saved "
            "with save_pretrained (Depth Anything, DPT)."
        )
    try:
        return AutoModelForDepthEstimation.from_pretrained(str(path) if path.is_dir() else model_id, dtype=dtype)
    except ModelLoadError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as error:
        raise ModelMismatch(
            f"Model {model_id!r} could not be loaded as a depth estimator (a transformers "
            f"AutoModelForDepthEstimation such as Depth Anything or DPT): {error}"
        ) from error


def _processor_config(model_id: str) -> dict[str, Any]:
    """The model's preprocessor_config.json ({} when it has none): from the folder or the hub cache."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        file: Path | None = path / "preprocessor_config.json"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            file = Path(hf_hub_download(model_id, "preprocessor_config.json"))
        except (EntryNotFoundError, OSError):
            file = None
    if file is None or not file.is_file():
        log.info("%s has no preprocessor_config.json: using its architecture's defaults", model_id)
        return {}
    return json.loads(file.read_text())


def preprocessing_for(config: Any, processor: dict[str, Any]) -> Preprocessing:
    """The preprocessing of a depth model: its preprocessor_config.json's values where it has them, else the
    defaults of its architecture's image processor (the values its hub checkpoints were saved with)."""
    backbone = getattr(config, "backbone_config", None)
    image_size = getattr(backbone, "image_size", None) or getattr(config, "image_size", None) or 384
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if config.model_type == "depth_anything":  # Depth Anything's processor: aspect kept, multiples of 14
        defaults = Preprocessing(height, width, True, int(config.patch_size), "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    else:  # DPTImageProcessor's own defaults, as Intel's DPT checkpoints have them
        defaults = Preprocessing(height, width, False, 1, "bicubic", HALF, HALF)
    size = processor.get("size", {})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    normalize = processor.get("do_normalize", True)
    return Preprocessing(
        height=int(size.get("height", defaults.height)),
        width=int(size.get("width", defaults.width)),
        keep_aspect_ratio=bool(processor.get("keep_aspect_ratio", defaults.keep_aspect_ratio)),
        multiple=int(processor.get("ensure_multiple_of", defaults.multiple)),
        mode=_RESAMPLE.get(processor.get("resample", 3), "bicubic"),
        mean=tuple(processor.get("image_mean", defaults.mean)) if normalize else (0.0, 0.0, 0.0),
        std=tuple(processor.get("image_std", defaults.std)) if normalize else (1.0, 1.0, 1.0),
    )


def tiny_depth_model(model_id: str, seed: int = 0) -> PreTrainedModel:
    """A miniature random model of the architecture `model_id` names: DPT with a Swinv2 backbone when the id
    says 'dpt', else Depth Anything with a Dinov2 backbone. Deterministic for a seed."""
    if "dpt" in model_id.lower():
        config: Any = DPTConfig(
            # Intel/dpt-swinv2-base-384 is embed_dim 128, depths (2, 2, 18, 2), window 24, 384x384.
            backbone_config=Swinv2Config(
                image_size=64,
                embed_dim=16,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 2, 2],
                window_size=4,
                out_features=["stage1", "stage2", "stage3", "stage4"],
            ),
            neck_hidden_sizes=[16, 32, 64, 128],  # the channels of the four Swinv2 stages: embed_dim * 2**i
            fusion_hidden_size=16,
        )
    else:
        config = DepthAnythingConfig(
            # The real small model: hidden 384, 12 layers, 518x518. The neck takes four distinct layers'
            # outputs (out_indices may not repeat), hence four layers.
            backbone_config=Dinov2Config(
                image_size=70,  # 5x5 patches of 14: the processor's default size, read back from the config
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                intermediate_size=64,
                out_indices=[1, 2, 3, 4],
                reshape_hidden_states=False,
            ),
            reassemble_hidden_size=32,
            neck_hidden_sizes=[16, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
        )
    with _seeded(seed):
        model = AutoModelForDepthEstimation.from_config(config)
        # With transformers' init (std 0.02) the maps come out around 1e-7, and mostly 0 after the head's
        # final ReLU. Variance-preserving convs give maps of ordinary scale; a last 1x1 conv with positive
        # weights (its input is a ReLU's, so >= 0) keeps nearly every pixel above 0, so the maps follow the
        # input everywhere and the tests can see that each frame gets its own map.
        convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        for conv in convs:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            if conv.bias is not None:
                torch.nn.init.zeros_(conv.bias)
        convs[-1].weight.data.abs_()
    return model.eval()
