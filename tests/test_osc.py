"""OSC (server/osc.py) as performers' tools send it: python-osc over loopback UDP changes the output of
the real server (the echo model's `invert`) for every streaming session or for one; bad packets,
unknown addresses, wrong types and out-of-range values change nothing and are logged; a flood of
packets leaves the server serving."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.udp_client import SimpleUDPClient

from bench.live import Client, free_udp_port, mjpeg_frames, run_server
from server.osc import MAX_LOG_LINES_PER_S

ECHO = ("--pipeline", "bench.echo_pipeline")
WHITE = Image.new("RGB", (256, 256), (240, 240, 240))
# What the page sends with every frame: invert included, unchanged, so OSC's change must survive it.
PAGE = {"width": 256, "height": 256, "invert": False}


@pytest.fixture(scope="module")
def server():
    port = free_udp_port()
    with run_server(*ECHO, "--osc-port", str(port)) as s:
        s.osc_port = port
        yield s


def brightness(jpeg: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(jpeg))).mean())


class User:
    """A page streaming a white camera (the echo model shows it white, or black when inverted)."""

    def __init__(self, server, first: list[dict] = ()) -> None:
        self.client = Client(server)
        self.server = server
        self.first = first  # messages sent before the frames start (none may come between a frame's three)

    async def __aenter__(self) -> User:
        buffer = io.BytesIO()
        WHITE.save(buffer, "JPEG")
        await self.client.connect()
        for message in self.first:
            await self.client.ws.send(json.dumps(message))
        self.http = httpx.AsyncClient(timeout=30)
        self.stream = mjpeg_frames(self.server, self.client.user_id, self.http)
        self.pump = asyncio.create_task(self.client.pump(PAGE, jpeg=buffer.getvalue()))
        return self

    async def __aexit__(self, *exc) -> None:
        self.pump.cancel()
        await self.client.close()
        await self.http.aclose()

    async def shows(self, inverted: bool, within: int = 60) -> None:
        """A frame within the next `within` shows the frame inverted, or not."""
        for _ in range(within):
            frame = await asyncio.wait_for(anext(self.stream), 30)
            if (brightness(frame) < 128) == inverted:
                return
        raise AssertionError(f"no {'inverted' if inverted else 'plain'} frame in {within}")


async def sending_until(user: User, inverted: bool, send) -> None:
    """Send again and again, as a fader does, until the output shows it: past a flood's second."""

    async def keep_sending() -> None:
        while True:
            send()
            await asyncio.sleep(0.25)

    sending = asyncio.create_task(keep_sending())
    try:
        await user.shows(inverted=inverted, within=3000)  # frames come fast: seconds, not frames, count here
    finally:
        sending.cancel()


def test_osc_changes_every_streaming_session_or_one(server):
    osc = SimpleUDPClient("127.0.0.1", server.osc_port)

    async def scenario():
        async with User(server) as one, User(server) as other:
            await one.shows(inverted=False)
            await other.shows(inverted=False)
            osc.send_message("/live/invert", True)  # every streaming session
            await one.shows(inverted=True)
            await other.shows(inverted=True)
            osc.send_message(f"/live/{one.client.user_id[:8]}/invert", False)  # that session only
            await one.shows(inverted=False)
            await other.shows(inverted=True, within=1)
            assert await anext(other.stream) and await anext(other.stream)
            await other.shows(inverted=True, within=1)  # still: the page's own unchanged values did not undo it

    asyncio.run(scenario())


def test_bad_osc_changes_nothing_and_is_logged(server):
    osc = SimpleUDPClient("127.0.0.1", server.osc_port)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def scenario():
        async with User(server) as user:
            await user.shows(inverted=False)
            raw.sendto(b"\x00garbage, not OSC", ("127.0.0.1", server.osc_port))
            osc.send_message("/elsewhere/invert", True)
            osc.send_message("/live/nope", 1)
            osc.send_message("/live/width", 4000)
            osc.send_message("/live/width", "wide")
            osc.send_message("/live/invert", [True, False])
            osc.send_message("/live/00000000/invert", True)
            for line in ["not an OSC packet", "unknown address '/elsewhere/invert'", "unknown parameter 'nope'",
                         "'width'", "takes one value, got 2", "no session '00000000'"]:
                server.wait_for_log(line)
            await user.shows(inverted=False, within=1)
            frames = [await anext(user.stream) for _ in range(3)]
            assert all(Image.open(io.BytesIO(f)).size == (256, 256) for f in frames)  # width unchanged

    asyncio.run(scenario())
    raw.close()


def test_the_parameters_are_listed_to_whoever_asks(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(OscMessageBuilder("/live/params").build().dgram, ("127.0.0.1", server.osc_port))
        listed = {}
        while len(listed) < 6:
            message = OscPacket(sock.recv(65536)).messages[0].message
            assert message.address == "/live/param"
            name, kind, default, low, high = message.params
            listed[name] = (kind, default, low, high)
    assert listed["invert"][:2] == ("boolean", "False")
    assert listed["delay_ms"] == ("number", "0.0", "0.0", "5000.0")
    assert listed["width"][0] == "integer"


def test_a_flood_of_packets_leaves_the_server_serving(server):
    """20,000 packets as fast as one socket sends them: read at a bounded rate, the rest dropped."""
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    packet = OscMessageBuilder("/live/nope").build().dgram

    async def scenario():
        async with User(server) as user:
            await user.shows(inverted=False)
            started = time.monotonic()
            for _ in range(20_000):
                flood.sendto(packet, ("127.0.0.1", server.osc_port))

            osc = SimpleUDPClient("127.0.0.1", server.osc_port)
            await sending_until(user, inverted=True, send=lambda: osc.send_message(f"/live/{user.client.user_id[:8]}/invert", True))
            assert server.health()["status"] == "ok"
            return time.monotonic() - started

    took = asyncio.run(scenario())
    flood.close()
    seconds = int(took) + 2  # whole seconds the flood may have touched
    assert server.log.count("unknown parameter 'nope'") <= MAX_LOG_LINES_PER_S * seconds  # not one a packet


def test_a_preset_of_the_page_is_recalled_over_osc_and_the_page_hears_of_it(server):
    osc = SimpleUDPClient("127.0.0.1", server.osc_port)

    presets = [
        {"status": "presets", "presets": [{"name": "x" * 65, "params": {}}]},
        {"status": "presets", "presets": [{"name": "dark", "params": {"invert": True}}] * 10},
        {"status": "presets", "presets": [{"name": "huge", "params": {"width": 9999}}]},
        {"status": "presets", "presets": [{"name": "plain", "params": {"invert": False}},
                                          {"name": "dark", "params": {"invert": True}}]},
    ]

    async def scenario():
        async with User(server, first=presets) as user:
            await user.shows(inverted=False)
            await sending_until(user, inverted=True, send=lambda: osc.send_message(f"/live/{user.client.user_id[:8]}/preset", 2))
            news = {"status": "params", "params": {"invert": True}}  # the page hears of it (the pump keeps messages)
            for _ in range(3000):
                if news in user.client.messages:
                    break
                await asyncio.wait_for(anext(user.stream), 30)  # frames go on meanwhile
            assert news in user.client.messages
            errors = [m["message"] for m in user.client.messages if m["status"] == "error"]
            assert errors[0].startswith("Preset 1: expected") and "at most 9" in errors[1]
            assert errors[2].startswith("Preset 1 (huge): Invalid parameter 'width'")
            missing = f"session {user.client.user_id[:8]} has no preset 7"
            for _ in range(30):  # again until logged: refusals are logged a few a second, the flood's may use this one's
                osc.send_message(f"/live/{user.client.user_id[:8]}/preset", 7)
                if missing in server.log:
                    break
                await asyncio.sleep(0.2)
            assert missing in server.log
            # As faders send numbers, and again and again (a packet may fall in the flood test's last second).
            await sending_until(user, inverted=False, send=lambda: osc.send_message("/live/preset", 1.0))

    asyncio.run(scenario())
