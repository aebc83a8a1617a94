"""Depth maps as ControlNet conditioning (pipelines/_annotators.py) on miniature random depth models of the
real architectures: what each frame of a batch gets, loading from a folder and the failures a user meets,
and the tensor preprocessing against transformers' own image processor.

Run with HF_HUB_OFFLINE=1 (tests/conftest.py sets it): nothing here may touch the network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, DPTImageProcessorPil

from pipelines._annotators import (
    DEPTH_ANYTHING_ID,
    DPT_ID,
    DepthEstimator,
    load_depth_estimator,
    preprocessing_for,
    tiny_depth_model,
)
from pipelines._base import ModelMismatch, ModelUnavailable

CPU = torch.device("cpu")
KINDS = [DEPTH_ANYTHING_ID, DPT_ID]


def frame(height: int, width: int, seed: int) -> torch.Tensor:
    """A 3xHxW camera-like frame in [0, 1]: smooth shapes plus texture, on the uint8 grid (as decoded JPEG)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None]
    phase = float(torch.rand((), generator=gen)) * 6
    smooth = torch.stack([y * x, (1 - y) * x, 0.5 + 0.5 * torch.sin(12 * x + 7 * y + phase)])
    image = 0.8 * smooth + 0.2 * torch.rand(3, height, width, generator=gen)
    return (image.clamp(0, 1) * 255).round() / 255


def tiny(model_id: str, dtype: torch.dtype = torch.float32) -> DepthEstimator:
    return load_depth_estimator(model_id, tiny=True, device=CPU, dtype=dtype)


@pytest.mark.parametrize("model_id", KINDS)
def test_each_frame_gets_its_own_normalised_map(model_id: str) -> None:
    estimator = tiny(model_id)
    a, b = frame(256, 320, seed=1), frame(256, 320, seed=2)
    maps = estimator(torch.stack([a, b]).double())

    assert maps.shape == (2, 3, 256, 320) and maps.dtype == torch.float64 and maps.device == CPU
    assert torch.equal(maps[:, 0], maps[:, 1]) and torch.equal(maps[:, 0], maps[:, 2])
    # min-max per frame, not over the batch
    assert maps.amin(dim=(1, 2, 3)).tolist() == [0.0, 0.0]
    assert maps.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    assert (maps[0] - maps[1]).abs().mean() > 0.02  # the map follows the frame

    # Batching does not mix frames: a frame's map is the same in either position and beside any frame.
    swapped = estimator(torch.stack([b, a]).double())
    twice = estimator(torch.stack([a, a]).double())
    torch.testing.assert_close(swapped[1], maps[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped[0], maps[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(twice[0], twice[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(twice[0], maps[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_id", KINDS)
def test_tiny_models_are_deterministic_fast_and_leave_the_rng_alone(model_id: str) -> None:
    state = torch.get_rng_state()
    first, second = tiny(model_id), tiny(model_id)
    assert torch.equal(torch.get_rng_state(), state)
    frames = torch.stack([frame(256, 256, seed=3), frame(256, 256, seed=4)])
    assert torch.equal(first(frames), second(frames))
    # Of the architecture the id names, and miniature.
    assert first.model.config.model_type == ("dpt" if "dpt" in model_id else "depth_anything")
    assert first.model.config.backbone_config.model_type == ("swinv2" if "dpt" in model_id else "dinov2")
    assert sum(p.numel() for p in first.model.parameters()) < 1_000_000
    start = time.perf_counter()
    first(frames)
    assert time.perf_counter() - start < 0.5  # about 10 ms here; generous for a busy CI machine


def test_model_dtype_is_internal() -> None:
    """A bf16 model takes and gives the caller's float32 frames."""
    estimator = tiny(DEPTH_ANYTHING_ID, torch.bfloat16)
    assert estimator.model.dtype == torch.bfloat16
    maps = estimator(frame(128, 160, seed=5)[None])
    assert maps.dtype == torch.float32 and maps.shape == (1, 3, 128, 160)
    assert maps.min() == 0 and maps.max() == 1


def input_sizes(estimator: DepthEstimator) -> list[tuple[int, int]]:
    """Records the spatial size of the pixel_values each model call gets."""
    sizes: list[tuple[int, int]] = []

    def hook(_module, args, kwargs):
        sizes.append(tuple(kwargs["pixel_values"].shape[-2:]))

    estimator.model.register_forward_pre_hook(hook, with_kwargs=True)
    return sizes


@pytest.mark.parametrize("model_id", KINDS)
def test_a_saved_model_loads_back_from_its_folder(model_id: str, tmp_path: Path) -> None:
    in_memory = tiny(model_id)
    in_memory.model.save_pretrained(tmp_path)
    loaded = load_depth_estimator(str(tmp_path), tiny=False, device=CPU, dtype=torch.float32)
    assert type(loaded.model) is type(in_memory.model)
    assert loaded.preprocessing == in_memory.preprocessing  # no preprocessor_config.json: the config's size
    frames = torch.stack([frame(256, 320, seed=6), frame(256, 320, seed=7)])
    torch.testing.assert_close(loaded(frames), in_memory(frames), atol=1e-6, rtol=0)


def test_preprocessor_config_is_honoured(tmp_path: Path) -> None:
    tiny(DEPTH_ANYTHING_ID).model.save_pretrained(tmp_path)
    processor = {
        "image_processor_type": "DPTImageProcessor",
        "size": {"height": 98, "width": 126},  # not the config's 70x70
        "keep_aspect_ratio": False,
        "ensure_multiple_of": 14,
        "resample": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    estimator = load_depth_estimator(str(tmp_path), tiny=False, device=CPU, dtype=torch.float32)
    sizes = input_sizes(estimator)
    frames = torch.full((1, 3, 200, 300), 0.75)
    assert estimator(frames).shape == (1, 3, 200, 300)
    assert sizes == [(98, 126)]
    # mean and std too: a flat 0.75 frame becomes (0.75 - 0.5) / 0.25 everywhere
    torch.testing.assert_close(estimator.pixel_values(frames), torch.ones(1, 3, 98, 126))


def test_an_uncached_hub_id_offline_is_unavailable_at_once() -> None:
    model_id = "live-diffusion-tests/no-such-depth-model"
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=model_id):
        load_depth_estimator(model_id, tiny=False, device=CPU, dtype=torch.float32)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("path", ["./no/such/folder", "no/such/folder"])
def test_a_missing_folder_is_unavailable(path: str) -> None:
    with pytest.raises(ModelUnavailable, match="no/such/folder.*no such folder"):
        load_depth_estimator(path, tiny=False, device=CPU, dtype=torch.float32)


def test_a_folder_of_something_else_is_a_mismatch(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelMismatch, match=f"{empty}.*no config.json"):
        load_depth_estimator(str(empty), tiny=False, device=CPU, dtype=torch.float32)

    clip = tmp_path / "clip"
    CLIPTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
        clip
    )
    with pytest.raises(ModelMismatch, match=f"{clip}.*could not be loaded as a depth estimator.*CLIPTextConfig"):
        load_depth_estimator(str(clip), tiny=False, device=CPU, dtype=torch.float32)


@pytest.mark.parametrize(
    "processor, height, width",
    [
        # LiheYoung/depth-anything-small-hf's processor on a 480x640 camera frame (downscaled, aspect kept)
        (
            DPTImageProcessorPil(
                size={"height": 182, "width": 182},  # 518 in the real one; smaller keeps the test fast
                keep_aspect_ratio=True,
                ensure_multiple_of=14,
                image_mean=[0.485, 0.456, 0.406],
                image_std=[0.229, 0.224, 0.225],
            ),
            480,
            640,
        ),
        # Intel/dpt-swinv2-base-384's processor (DPTImageProcessor's defaults at 384x384) on a smaller frame
        (DPTImageProcessorPil(size={"height": 384, "width": 384}), 256, 320),
    ],
)
def test_tensor_preprocessing_matches_the_hf_image_processor(processor, height: int, width: int) -> None:
    """The batched tensor path gives the model what transformers' DPTImageProcessor (PIL backend: the
    torchvision one cannot run here) gives it for the same frame, read from the processor's saved JSON."""
    model = tiny_depth_model(DEPTH_ANYTHING_ID)
    estimator = DepthEstimator(model, preprocessing_for(model.config, json.loads(processor.to_json_string())))
    image = frame(height, width, seed=8)
    expected = processor(images=(image * 255).round().byte().permute(1, 2, 0).numpy(), return_tensors="pt")
    ours = estimator.pixel_values(image[None])

    assert ours.shape == expected["pixel_values"].shape
    difference = (ours - expected["pixel_values"]).abs()
    # PIL resizes uint8 in two passes, rounding (and clipping) to 0-255 after each; torch resizes floats in
    # one go. Rounding alone is up to 0.5/255 per pass, 0.0087 to 0.017 after dividing by std (0.229 to
    # 0.5): on average the two agree to that; a few high-contrast pixels (random texture) differ by up to
    # ~3 levels, 0.06. Downscaling without antialiasing (PIL always filters over the whole source footprint)
    # averages 0.15; a wrong mean or std shifts every pixel by more than 0.02.
    assert difference.mean() < 0.01
    assert difference.max() < 0.1
