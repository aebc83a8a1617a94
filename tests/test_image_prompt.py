"""An image prompt (IP-Adapter set-ups) over the websocket, through the real server with --tiny: sent
once, used with every frame after it, cleared; refused clearly where it cannot be used, and a bad
one changes nothing."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from bench.live import Client, camera_jpeg, mjpeg_frames, run_server
from server.imaging import decode_jpeg

PARAMS = {"width": 256, "height": 256, "seed": 3}
FRAME = camera_jpeg(1, 256, 256)


@pytest.fixture(scope="module")
def server():
    with run_server("--tiny", "--pipeline", "IPcompositionHyperSD15", "--max-frame-bytes", "200000") as running:
        yield running


def pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(decode_jpeg(jpeg, max_bytes=10**7, max_pixels=10**7)).astype(int)


class Page:
    """A page's conversation, one frame at a time, reading its own output stream."""

    def __init__(self, server) -> None:
        self.client = Client(server)
        self.server = server
        self.infos: list[str] = []
        self.errors: list[str] = []
        self.asked = False  # a send_frame came while waiting for something else

    async def __aenter__(self) -> Page:
        await self.client.connect()
        self.http = httpx.AsyncClient(timeout=60)
        self.stream = mjpeg_frames(self.server, self.client.user_id, self.http)
        self.reader = asyncio.ensure_future(self.stream.__anext__())
        return self

    async def __aexit__(self, *exc) -> None:
        self.reader.cancel()
        await self.http.aclose()
        await self.client.close()

    async def next_output(self) -> np.ndarray:
        """Answer the next send_frame with FRAME and return the output frame that follows."""
        await self.asked_for_a_frame()
        await self.client.send_frame(PARAMS, FRAME)
        jpeg = await asyncio.wait_for(self.reader, 60)
        self.reader = asyncio.ensure_future(self.stream.__anext__())
        return pixels(jpeg)

    async def asked_for_a_frame(self, *, answering: bool = True) -> None:
        """Until the server asks for a frame (or has asked meanwhile); `answering`: the caller answers it."""
        while not self.asked:
            message = await self.client.recv(60)
            if message["status"] == "send_frame":
                self.asked = True
            else:
                self._note(message)
        self.asked = not answering

    async def send_image_prompt(self, data: bytes | None, *, text_instead: bool = False) -> dict:
        """Announce an image prompt (or clear it), send it, and return the server's answer."""
        if data is None:
            await self.client.ws.send(json.dumps({"status": "image_prompt", "clear": True}))
        else:
            await self.client.ws.send(json.dumps({"status": "image_prompt"}))
            await self.client.ws.send("not an image" if text_instead else data)
        while True:
            message = await self.client.recv(60)
            if message["status"] in ("info", "error"):
                return message
            if message["status"] == "send_frame":  # answered by the next next_output()
                self.asked = True

    def _note(self, message: dict) -> None:
        (self.errors if message["status"] == "error" else self.infos).append(message.get("message", ""))


def jpeg_of(seed: int, size: tuple[int, int] = (200, 150)) -> bytes:
    return camera_jpeg(seed, *size)


async def settle(page: Page, differs_from: np.ndarray | None = None, equals: np.ndarray | None = None) -> np.ndarray:
    """Outputs until one meets the condition (a frame already in flight may still show the old prompt)."""
    for _ in range(4):
        output = await page.next_output()
        if differs_from is not None and np.abs(output - differs_from).max() > 8:
            return output
        if equals is not None and np.abs(output - equals).max() <= 2:
            return output
    raise AssertionError("the image prompt did not take effect within four frames")


def test_an_image_prompt_steers_every_frame_until_cleared(server):
    async def scenario():
        async with Page(server) as page:
            settings = httpx.get(f"{server.http}/api/settings").json()
            assert settings["info"]["properties"]["takes_image_prompt"]["default"] is True
            camera_as_prompt = await page.next_output()
            assert np.abs(await page.next_output() - camera_as_prompt).max() <= 2  # deterministic
            answer = await page.send_image_prompt(jpeg_of(5))
            assert answer == {"status": "info", "message": "Image prompt set"}
            prompted = await settle(page, differs_from=camera_as_prompt)
            assert np.abs(await page.next_output() - prompted).max() <= 2  # kept, frame after frame
            answer = await page.send_image_prompt(jpeg_of(6))
            assert answer["status"] == "info"
            other = await settle(page, differs_from=prompted)
            assert np.abs(other - camera_as_prompt).max() > 8
            answer = await page.send_image_prompt(None)
            assert answer["message"].startswith("Image prompt cleared")
            await settle(page, equals=camera_as_prompt)
            assert page.errors == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("data", "text_instead", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, False, "Image prompt: "),
        (b"", False, "Image prompt: "),
        (b"\xff\xd8\xff" + b"\0" * 300_000, False, "Image prompt: "),  # over --max-frame-bytes
        (b"", True, "Expected a binary JPEG"),
    ],
    ids=["not a JPEG", "empty", "too large", "text instead"],
)
def test_a_bad_image_prompt_is_refused_and_the_last_good_one_stays(server, data, text_instead, expected):
    async def scenario():
        async with Page(server) as page:
            camera_as_prompt = await page.next_output()
            await page.send_image_prompt(jpeg_of(5))
            prompted = await settle(page, differs_from=camera_as_prompt)
            answer = await page.send_image_prompt(data, text_instead=text_instead)
            assert answer["status"] == "error" and answer["message"].startswith(expected), answer
            for _ in range(2):  # the conversation goes on, with the good image prompt
                assert np.abs(await page.next_output() - prompted).max() <= 2

    asyncio.run(scenario())


def test_a_damaged_jpeg_image_prompt_fails_its_frames_with_a_message_not_the_server(server):
    whole = jpeg_of(8)
    damaged = whole[: len(whole) // 2]  # the header whole, half the picture: passes the check, fails to decode

    async def scenario():
        async with Page(server) as page:
            await page.next_output()
            assert (await page.send_image_prompt(damaged))["status"] == "info"
            await page.asked_for_a_frame()
            await page.client.send_frame(PARAMS, FRAME)  # with the damaged image prompt: no output, an error
            await page.asked_for_a_frame(answering=False)  # asked again: the conversation goes on
            assert [e for e in page.errors if e.startswith("Image prompt:")], page.errors
            assert (await page.send_image_prompt(jpeg_of(7)))["status"] == "info"
            await page.next_output()  # and a good one streams again

    asyncio.run(scenario())


def test_a_pipeline_without_an_adapter_refuses_an_image_prompt():
    with run_server("--tiny", "--pipeline", "controlnetHyperSD") as plain:
        async def scenario():
            async with Page(plain) as page:
                await page.next_output()
                answer = await page.send_image_prompt(None)
                assert answer == {"status": "error", "message": "This pipeline takes no image prompt (its set-up has no IP-Adapter)"}
                settings = httpx.get(f"{plain.http}/api/settings").json()
                assert settings["info"]["properties"]["takes_image_prompt"]["default"] is False
                await page.next_output()

        asyncio.run(scenario())
