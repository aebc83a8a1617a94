"""--safety-checker: Stable Diffusion's checker (miniature here) between the model and the stream."""

import asyncio

import httpx
import numpy as np
import simplejpeg
import torch
from PIL import Image

from pipelines.base import ModelOptions
from pipelines.common import SafetyChecker
from tests.live import Client, mjpeg_frames, run_server, take


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
            client = Client(server)
            await client.connect()
            async with httpx.AsyncClient(timeout=60) as http:
                pump = asyncio.create_task(client.pump({"width": 256, "height": 256}))
                frames = await take(mjpeg_frames(server, client.user_id, http), 2)
                pump.cancel()
            await client.close()
            assert all(simplejpeg.decode_jpeg(f).shape == (256, 256, 3) for f in frames)

        asyncio.run(scenario())
