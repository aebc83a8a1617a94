"""NDI output (--ndi) end to end: the real server publishes each streaming session as an NDI source,
and a real NDI receiver in this process finds it on loopback and receives its frames.

Discovery without avahi (../shared/ENVIRONMENT.md): a finder with extra_ips 127.0.0.1 asks the NDI
process on this machine directly. Only the server creates senders: a sender in this process could
take the discovery port and hide the server's sources.

The stand-in model (bench.echo_pipeline) returns its input frame, so the pixels that arrive over NDI
can be compared with the camera frame that was sent: size, colour order and all.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import NDIlib as ndi  # ndi-python: in the dev extra, as these tests need it
import numpy as np
import pytest
import simplejpeg

from bench.live import Client, mjpeg_frames, run_server, take

NDI_NAME = f"LD test {uuid.uuid4().hex[:6]}"  # unique: another run on this machine cannot be mistaken for this one


@pytest.fixture(scope="module")
def server():
    with run_server("--pipeline", "bench.echo_pipeline", "--ndi", "--ndi-name", NDI_NAME) as s:
        yield s


@pytest.fixture(scope="module")
def finder():
    assert ndi.initialize()
    instance = ndi.find_create_v2(ndi.FindCreate(True, None, "127.0.0.1"))
    yield instance
    ndi.find_destroy(instance)


def source_name(client: Client) -> str:
    return f"{NDI_NAME} {client.user_id[:8]}"


def sources(finder) -> dict[str, object]:
    """Our server's sources by name; NDI shows them as 'MACHINE (name)'."""
    ndi.find_wait_for_sources(finder, 100)
    found = {}
    for source in ndi.find_get_current_sources(finder):
        name = source.ndi_name
        if "(" in name and name.endswith(")"):
            name = name[name.index("(") + 1 : -1]
        if name.startswith(NDI_NAME):
            found[name] = source
    return found


async def wait_for_sources(finder, expected: set[str], timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(sources, finder)
        if set(found) == expected:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"NDI sources {sorted(found)}, expected {sorted(expected)}")
        await asyncio.sleep(0.1)


def receive(source: object, count: int, timeout: float = 30.0) -> list[tuple[int, int, object, float, np.ndarray, float]]:
    """`count` video frames from `source` as (width, height, FourCC, frame rate, BGRX pixels, arrival time)."""
    settings = ndi.RecvCreateV3()
    settings.color_format = ndi.RECV_COLOR_FORMAT_BGRX_BGRA
    receiver = ndi.recv_create_v3(settings)
    ndi.recv_connect(receiver, source)
    frames = []
    deadline = time.monotonic() + timeout
    try:
        while len(frames) < count and time.monotonic() < deadline:
            kind, video, _, _ = ndi.recv_capture_v2(receiver, 200)
            if kind == ndi.FRAME_TYPE_VIDEO:
                rate = video.frame_rate_N / video.frame_rate_D
                frames.append((video.xres, video.yres, video.FourCC, rate, np.copy(video.data), time.monotonic()))
                ndi.recv_free_video_v2(receiver, video)
    finally:
        ndi.recv_destroy(receiver)
    assert len(frames) == count, f"received {len(frames)} of {count} NDI frames"
    return frames


def gradient_jpeg(width: int, height: int) -> tuple[bytes, np.ndarray]:
    """A frame whose colour channels differ everywhere (red left to right, green top to bottom, blue
    constant): swapped channels would show at once."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    return simplejpeg.encode_jpeg(rgb, quality=95), rgb


def test_a_streaming_session_is_an_ndi_source_with_its_frames(server, finder):
    jpeg, rgb = gradient_jpeg(320, 256)

    async def scenario():
        client = Client(server)
        await client.connect()
        await asyncio.sleep(1.0)  # time for a source that should not exist to show up
        before_stream = await asyncio.to_thread(sources, finder)  # connected, not yet streaming
        async with httpx.AsyncClient(timeout=60) as http:
            stream = mjpeg_frames(server, client.user_id, http)
            pump = asyncio.create_task(client.pump({"delay_ms": 100, "width": 320, "height": 256}, jpeg=jpeg))
            await take(stream, 1)
            found = await wait_for_sources(finder, {source_name(client)})
            frames = await asyncio.to_thread(receive, found[source_name(client)], 8)
            streamed = await take(stream, 1)
            pump.cancel()
        await client.close()
        return before_stream, frames, streamed[0]

    before_stream, frames, streamed = asyncio.run(scenario())
    assert before_stream == {}
    for width, height, fourcc, _, pixels, _ in frames:
        assert (width, height) == (320, 256)
        assert fourcc in (ndi.FOURCC_VIDEO_TYPE_BGRX, ndi.FOURCC_VIDEO_TYPE_BGRA)
        assert pixels.shape == (256, 320, 4)
    received_rgb = frames[-1][4][..., 2::-1].astype(int)  # BGRX -> RGB
    assert np.abs(received_rgb - rgb).mean() < 6  # the camera frame, colours in order (NDI is lossy)
    # The same frame as the MJPEG stream shows.
    assert np.abs(received_rgb - simplejpeg.decode_jpeg(streamed).astype(int)).mean() < 6
    # The real frame rate: a 100 ms model plus the round trip, so a little under 10 frames a second,
    # and about the rate the frames arrived at here.
    declared = frames[-1][3]
    arrived = (len(frames) - 1) / (frames[-1][5] - frames[0][5])
    print(f"NDI frame rate: {declared:.2f} declared, {arrived:.2f} arrived")
    assert declared <= 10.5 and 0.6 * arrived < declared < 1.6 * arrived, (declared, arrived)


def test_the_source_goes_away_when_the_session_ends(server, finder):
    async def scenario():
        client = Client(server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            stream = mjpeg_frames(server, client.user_id, http)
            pump = asyncio.create_task(client.pump({"delay_ms": 50, "width": 256, "height": 256}))
            await take(stream, 1)
            await wait_for_sources(finder, {source_name(client)})
            pump.cancel()
            await client.close()
            started = time.monotonic()
            await wait_for_sources(finder, set())
        return time.monotonic() - started

    gone_after = asyncio.run(scenario())
    print(f"NDI source gone {gone_after:.2f} s after the session ended")
    server.wait_for_users(0)
    assert "ndi output closed after" in server.log


def test_two_sessions_are_two_sources_with_their_own_frames(server, finder):
    async def scenario():
        first, second = Client(server), Client(server)
        await first.connect()
        await second.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            streams = [mjpeg_frames(server, c.user_id, http) for c in (first, second)]
            pumps = [
                asyncio.create_task(first.pump({"delay_ms": 50, "width": 256, "height": 256})),
                asyncio.create_task(second.pump({"delay_ms": 50, "width": 320, "height": 256})),
            ]
            for stream in streams:
                await take(stream, 1)
            found = await wait_for_sources(finder, {source_name(first), source_name(second)})
            first_frames = await asyncio.to_thread(receive, found[source_name(first)], 2)
            second_frames = await asyncio.to_thread(receive, found[source_name(second)], 2)
            for pump in pumps:
                pump.cancel()
            await first.close()
            left = await wait_for_sources(finder, {source_name(second)})  # one ended, the other lives on
            await second.close()
            await wait_for_sources(finder, set())
        return first_frames, second_frames, left

    first_frames, second_frames, left = asyncio.run(scenario())
    assert {(w, h) for w, h, *_ in first_frames} == {(256, 256)}
    assert {(w, h) for w, h, *_ in second_frames} == {(320, 256)}
    assert len(left) == 1
