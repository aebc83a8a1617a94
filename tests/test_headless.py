"""A session with no page (--session ndi:NAME): an NDI sender made here is its camera (over loopback),
the echo model shows it, OSC steers it, /api/health lists it, and it picks its source up again when
the source comes back. Its output is watched through the viewer link the server prints at launch.

NDI discovery on loopback asks the process holding port 5960 (../shared/ENVIRONMENT.md): the sender
here is made before the server starts, so that is this process, and the server's finder sees it."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import uuid

import httpx
import NDIlib as ndi  # ndi-python: in the dev extra
import numpy as np
import pytest
from PIL import Image
from pythonosc.udp_client import SimpleUDPClient

from bench.live import free_udp_port, mjpeg_frames, run_server

SOURCE = f"LD camera {uuid.uuid4().hex[:6]}"


class Sender:
    """An NDI source sending a bright frame 30 times a second from its own thread, until stopped."""

    def __init__(self, name: str) -> None:
        assert ndi.initialize()
        self.sender = ndi.send_create(ndi.SendCreate(name, None, True, False))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        frame = ndi.VideoFrameV2(320, 240, ndi.FOURCC_VIDEO_TYPE_BGRX, 30, 1)
        pixels = np.full((240, 320, 4), 230, np.uint8)
        while not self.stopped.is_set():
            frame.data = pixels
            ndi.send_send_video_v2(self.sender, frame)  # clocked: 30 a second

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        ndi.send_destroy(self.sender)


def brightness(jpeg: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(jpeg))).mean())


def test_a_session_with_no_page_runs_from_ndi_steered_by_osc():
    sender = Sender(SOURCE)
    osc_port = free_udp_port()
    try:
        with run_server("--pipeline", "bench.echo_pipeline", "--session", f"ndi:{SOURCE}",
                        "--session-params", '{"width": 256, "height": 256}', "--osc-port", str(osc_port)) as server:
            health = server.wait_for(lambda h: h["headless"] and h["headless"][0]["input_connected"])
            assert health["headless"][0]["input"] == f"ndi:{SOURCE}" and health["users"] == 1
            view_path = re.search(r"watch it at (/api/view/\S+)", server.wait_for_log("watch it at")).group(1)

            async def scenario():
                async with httpx.AsyncClient(timeout=30) as http:
                    frames = mjpeg_frames(server, view_path.rsplit("/", 1)[1], http, path="view")
                    first = await asyncio.wait_for(anext(frames), 30)
                    assert Image.open(io.BytesIO(first)).size == (256, 256) and brightness(first) > 200
                    SimpleUDPClient("127.0.0.1", osc_port).send_message("/live/invert", True)
                    for _ in range(60):
                        if brightness(await asyncio.wait_for(anext(frames), 30)) < 50:
                            return
                    raise AssertionError("OSC's invert never showed")

            asyncio.run(scenario())
            sender.stop()
            server.wait_for(lambda h: not h["headless"][0]["input_connected"], timeout=30)
            sender = Sender(SOURCE)  # the source comes back: the session takes it up again
            before = server.health()["frames_generated"]
            server.wait_for(lambda h: h["headless"][0]["input_connected"] and h["frames_generated"] > before + 5, timeout=60)
    finally:
        sender.stop()


def test_session_flags_are_checked_before_anything_loads():
    from server.config import parse

    with pytest.raises(ValueError, match="is not ndi:NAME"):
        parse(["--session", "rtmp://example.com/live"])
