"""WebRTC beside MJPEG (server/webrtc.py), with a real aiortc peer against the real server on loopback:
the camera goes up as a VP8 track, the output comes down as one, parameters go over the data channel;
bad offers and bad parameters get a clear error, and closing leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import io
import json
import time

import httpx
import numpy as np
import psutil
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import VideoFrame
from PIL import Image

from bench.live import Client, run_server

ECHO = ("--pipeline", "bench.echo_pipeline")
RED = (200, 40, 40)


@pytest.fixture(scope="module")
def server():
    with run_server(*ECHO, "--max-users", "10") as s:
        yield s


class Camera(MediaStreamTrack):
    """A camera-like track: a red field with sensor noise, 30 frames a second."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.size = (height, width)
        self.count = 0
        self.rng = np.random.default_rng(0)

    async def recv(self) -> VideoFrame:
        await asyncio.sleep(1 / 30)
        pixels = np.empty((*self.size, 3), dtype=np.uint8)
        pixels[:] = RED
        pixels = np.clip(pixels + self.rng.integers(-8, 9, pixels.shape), 0, 255).astype(np.uint8)
        frame = VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts, frame.time_base = self.count * 3000, fractions.Fraction(1, 90_000)
        self.count += 1
        return frame


class Peer:
    """The page's side: its camera up, the output down, a data channel for parameters."""

    def __init__(self, server, client: Client, token: str, *, camera: bool = True) -> None:
        self.server, self.client, self.token = server, client, token
        self.pc = RTCPeerConnection()
        self.channel = self.pc.createDataChannel("params")
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self.channel.on("message", lambda message: self.messages.put_nowait(json.loads(message)))
        self.output: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self.pc.on("track", lambda track: self.output.done() or self.output.set_result(track))
        if camera:
            self.pc.addTrack(Camera())

    async def offer(self, http: httpx.AsyncClient, sdp: str | None = None) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": sdp if sdp is not None else self.pc.localDescription.sdp, "type": "offer", "stream_token": self.token}
        return await http.post(f"{self.server.http}/api/webrtc/{self.client.user_id}", json=body)

    async def connect(self, http: httpx.AsyncClient) -> None:
        response = await self.offer(http)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["type"] == "answer"
        await self.pc.setRemoteDescription(RTCSessionDescription(**answer))

    async def opened(self) -> None:
        while self.channel.readyState != "open":
            await asyncio.sleep(0.01)

    async def frames(self, count: int, timeout: float = 60) -> list[np.ndarray]:
        track = await asyncio.wait_for(self.output, timeout)
        return [(await asyncio.wait_for(track.recv(), timeout)).to_ndarray(format="rgb24") for _ in range(count)]


@contextlib.asynccontextmanager
async def closing(client: Client, peer: Peer | None = None):
    """The client leaves at the end, whatever happened: a failed test leaves no session to the next."""
    try:
        yield
    finally:
        if peer is not None:
            await peer.pc.close()
        await client.close()


async def connected(server) -> tuple[Client, str]:
    client = Client(server)
    hello = await client.connect()
    return client, hello["stream_token"]


def test_the_camera_goes_up_and_the_output_comes_down(server):
    assert httpx.get(f"{server.http}/api/settings").json()["transports"] == ["webrtc", "mjpeg"]

    async def scenario():
        client, token = await connected(server)
        peer = Peer(server, client, token)
        async with httpx.AsyncClient(timeout=30) as http, closing(client, peer):
            await peer.connect(http)
            await peer.opened()
            peer.channel.send(json.dumps({"width": 256, "height": 256}))
            frames = await peer.frames(20)
            assert frames[-1].shape == (256, 256, 3)
            assert np.abs(frames[-1].reshape(-1, 3).mean(0) - RED).max() < 20  # the echo model shows the camera
            peer.channel.send(json.dumps({"width": 320, "height": 256}))  # parameters over the data channel
            deadline = time.monotonic() + 30
            while (await peer.frames(1))[0].shape != (256, 320, 3):
                assert time.monotonic() < deadline
            health = server.health()
            assert health["streams"] == 1 and health["frames_generated"] >= 20
            await peer.pc.close()
            await asyncio.to_thread(server.wait_for, lambda health: health["streams"] == 0)
        await client.close()
        server.wait_for_users(0)

    asyncio.run(scenario())


def test_bad_parameters_on_the_data_channel_get_an_error_and_change_nothing(server):
    async def scenario():
        client, token = await connected(server)
        peer = Peer(server, client, token)
        async with httpx.AsyncClient(timeout=30) as http, closing(client, peer):
            await peer.connect(http)
            await peer.opened()
            peer.channel.send(json.dumps({"width": 256, "height": 256}))
            await peer.frames(1)
            peer.channel.send(json.dumps({"status": "new_source"}))  # the page switched input: no error
            for message, expected in [("{oops", "not valid JSON"), ("[1, 2]", "JSON object"),
                                      (json.dumps({"status": "other"}), "Unknown status"),
                                      (json.dumps({"width": 99999}), "width"), (json.dumps({"nope": 1}), "Unknown parameter")]:
                peer.channel.send(message)
                error = await asyncio.wait_for(peer.messages.get(), 30)
                assert error["status"] == "error" and expected in error["message"], (message, error)
            assert (await peer.frames(3))[-1].shape == (256, 256, 3)  # still streaming, as it was
            await peer.pc.close()
        await client.close()

    asyncio.run(scenario())


def test_bad_offers_are_refused_with_a_reason(server):
    async def scenario():
        client, token = await connected(server)
        async with httpx.AsyncClient(timeout=30) as http, closing(client):
            url = f"{server.http}/api/webrtc/{client.user_id}"
            wrong_token = await Peer(server, client, "not-the-token").offer(http)
            assert wrong_token.status_code == 403 and "stream token" in wrong_token.json()["detail"]
            for sdp, reason in [("hello", "not SDP"), ("v=0\r\nm=video notaport UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n", "not a usable SDP offer")]:
                malformed = await http.post(url, json={"sdp": sdp, "type": "offer", "stream_token": token})
                assert malformed.status_code == 400 and reason in malformed.json()["detail"], malformed.text
            h265 = Peer(server, client, token)
            await h265.pc.setLocalDescription(await h265.pc.createOffer())
            only_h265 = h265.pc.localDescription.sdp.replace("VP8/90000", "H265/90000").replace("H264/90000", "H265/90000")
            unsupported = await http.post(url, json={"sdp": only_h265, "type": "offer", "stream_token": token})
            assert unsupported.status_code == 400 and "VP8 or H264" in unsupported.json()["detail"], unsupported.text
            await h265.pc.close()
            no_video = await Peer(server, client, token, camera=False).offer(http)
            assert no_video.status_code == 400 and "no video" in no_video.json()["detail"]
            too_long = await http.post(url, json={"sdp": "v" * 70_000, "type": "offer", "stream_token": token})
            assert too_long.status_code == 422
            nobody = await http.post(f"{server.http}/api/webrtc/00000000-0000-4000-8000-000000000000",
                                     json={"sdp": "v=0", "type": "offer", "stream_token": token})
            assert nobody.status_code == 404
            peer = Peer(server, client, token)  # the session is untouched: a good offer still works
            await peer.connect(http)
            await peer.opened()
            peer.channel.send(json.dumps({"width": 256, "height": 256}))
            assert len(await peer.frames(2)) == 2
            await peer.pc.close()
        await client.close()

    asyncio.run(scenario())


def test_connecting_and_leaving_again_and_again_leaves_nothing_behind(server):
    """Peer connections, threads, file descriptors and memory of the server stay as they were after 50
    connections that come and go."""
    process = psutil.Process(server.proc.pid)

    async def cycle(http: httpx.AsyncClient, index: int) -> None:
        client, token = await connected(server)
        peer = Peer(server, client, token)
        await peer.connect(http)
        if index % 2 == 0:  # half leave by closing the websocket first, half by closing the peer first
            await client.close()
            await peer.pc.close()
        else:
            await peer.pc.close()
            await client.close()

    async def scenario():
        async with httpx.AsyncClient(timeout=30) as http:
            await cycle(http, 0)
            server.wait_for_users(0)
            before = (process.num_fds(), process.num_threads())
            rss_before = process.memory_info().rss
            for index in range(50):
                await cycle(http, index)
            client, token = await connected(server)  # one page offering again and again: one connection
            async with closing(client):
                for _ in range(10):
                    await Peer(server, client, token).connect(http)
                assert server.health()["webrtc"] == 1
            server.wait_for_users(0)
            await asyncio.to_thread(server.wait_for, lambda health: health["streams"] == 0 and health["webrtc"] == 0)
            deadline = time.monotonic() + 30
            while (process.num_fds(), process.num_threads()) > (before[0] + 4, before[1] + 4):
                assert time.monotonic() < deadline, (before, process.num_fds(), process.num_threads())
                await asyncio.sleep(0.2)
            assert process.memory_info().rss - rss_before < 64 * 2**20

    asyncio.run(scenario())


async def sdp_offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


def test_a_whip_client_is_the_sessions_camera_until_it_leaves(server):
    """As OBS publishes: a send-only offer with the session's token as a bearer token. The page's
    websocket is not asked for frames meanwhile; once the WHIP client leaves, it is again."""
    from bench.live import jpeg_size, mjpeg_frames, take

    async def scenario():
        client, token = await connected(server)
        obs = RTCPeerConnection()
        obs.addTransceiver(Camera(), direction="sendonly")
        async with httpx.AsyncClient(timeout=30) as http, closing(client):
            url = f"{server.http}/api/whip/{client.user_id}"
            offer = await sdp_offer(obs)
            unauthorised = await http.post(url, content=offer, headers={"Content-Type": "application/sdp"})
            assert unauthorised.status_code == 401 and "Bearer" in unauthorised.json()["detail"]
            not_sdp = await http.post(url, json={"sdp": offer}, headers={"Authorization": f"Bearer {token}"})
            assert not_sdp.status_code == 415
            response = await http.post(url, content=offer, headers={"Content-Type": "application/sdp",
                                                                   "Authorization": f"Bearer {token}"})
            assert response.status_code == 201 and response.headers["content-type"].startswith("application/sdp")
            await obs.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
            stream = mjpeg_frames(server, client.user_id, http)
            frames = await take(stream, 10)  # the websocket sends nothing: these are OBS's frames
            assert len(frames) == 10
            pixels = np.asarray(Image.open(io.BytesIO(frames[-1]))).reshape(-1, 3).mean(0)
            assert np.abs(pixels - RED).max() < 25
            assert not any(m["status"] == "error" for m in client.messages)
            resource = server.http + response.headers["location"]
            assert (await http.delete(resource)).status_code == 401  # ending it takes the token too
            assert (await http.delete(resource, headers={"Authorization": f"Bearer {token}"})).status_code == 200
            await client.recv_until("send_frame")  # the page's camera again
            await obs.close()

    asyncio.run(scenario())


def test_a_whep_player_watches_the_output_as_a_viewer(server):
    async def scenario():
        client, token = await connected(server)
        page = Peer(server, client, token)
        player = RTCPeerConnection()
        player.addTransceiver("video", direction="recvonly")
        shown: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        player.on("track", lambda track: shown.done() or shown.set_result(track))
        async with httpx.AsyncClient(timeout=30) as http, closing(client, page):
            await page.connect(http)
            await page.opened()
            page.channel.send(json.dumps({"width": 256, "height": 256}))
            viewer_token = (await http.get(f"{server.http}/api/viewer-token/{client.user_id}")).json()["viewer_token"]
            assert (await http.post(f"{server.http}/api/whep/not-a-token", content=await sdp_offer(player),
                                    headers={"Content-Type": "application/sdp"})).status_code == 404
            response = await http.post(f"{server.http}/api/whep/{viewer_token}", content=player.localDescription.sdp,
                                       headers={"Content-Type": "application/sdp"})
            assert response.status_code == 201, response.text
            await player.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
            track = await asyncio.wait_for(shown, 30)
            frame = (await asyncio.wait_for(track.recv(), 60)).to_ndarray(format="rgb24")
            assert frame.shape == (256, 256, 3) and np.abs(frame.reshape(-1, 3).mean(0) - RED).max() < 25
            health = server.health()
            assert health["viewers"] == 1 and health["webrtc"] == 2  # the page's connection and the player's
            assert "live_diffusion_viewers 1.0" in (await http.get(f"{server.http}/metrics")).text
            assert (await http.delete(server.http + response.headers["location"])).status_code == 200
            await asyncio.to_thread(server.wait_for, lambda health: health["viewers"] == 0 and health["webrtc"] == 1)
            await player.close()

    asyncio.run(scenario())
