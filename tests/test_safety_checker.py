"""--safety-checker: Stable Diffusion's checker (miniature here) between the model and the stream."""

import asyncio

import numpy as np
import simplejpeg
import torch
from PIL import Image

from bench.live import LiveUser, run_server
from pipelines import ModelOptions
from pipelines._safety import SafetyChecker


def test_a_flagged_frame_comes_out_black_and_others_pass_unchanged():
    checker = SafetyChecker(ModelOptions(tiny=True), torch.device("cpu"), torch.float32)
    frame = Image.new("RGB", (64, 48), (200, 100, 50))
    assert checker(frame) is frame  # the default thresholds flag nothing in random weights
    checker.model.concept_embeds_weights.data.fill_(-2.0)  # now every concept matches
    flagged = checker(frame)
    assert flagged.size == (64, 48) and np.asarray(flagged).max() == 0


def test_server_streams_through_the_checker():
    with run_server("--tiny", "--safety-checker") as server:

        async def scenario():
            async with LiveUser(server, {"width": 256, "height": 256}) as user:
                frames = await user.frames(2)
            assert all(simplejpeg.decode_jpeg(f).shape == (256, 256, 3) for f in frames)

        asyncio.run(scenario())
