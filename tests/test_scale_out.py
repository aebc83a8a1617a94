"""--replicas 2: the real server with two engine replicas behind Ray Serve, started locally on this
machine (CPU replicas of the echo model), driven by the same clients as the single server: each
user's connections reach its replica, users spread over both, and a replica that dies takes only its
own users' sessions, which can reconnect, while Ray starts it again."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import httpx
import pytest
import ray.serve  # noqa: F401  (./test.sh installs the scale extra: missing, these tests fail, never skip)
import simplejpeg
from prometheus_client.parser import text_string_to_metric_families

from bench.live import LiveUser, camera_pixels, read_stamp, run_server, stamp

SMALL = {"width": 256, "height": 256}


@pytest.fixture(scope="module")
def server():
    with run_server("--pipeline", "bench.echo_pipeline", "--replicas", "2", startup_timeout=240) as s:
        yield s


def stamped(number: int) -> bytes:
    """A frame that carries its user's number: the echo model sends it back as it is."""
    pixels = camera_pixels(number, 256, 256)
    stamp(pixels, number)
    return simplejpeg.encode_jpeg(pixels)


def test_health_lists_the_replicas(server):
    health = server.health()
    assert health["status"] == "ok"
    assert [(replica["id"], replica["alive"]) for replica in health["replicas"]] == [(0, True), (1, True)]


def test_six_users_get_only_their_own_frames_and_both_replicas_hold_users(server):
    async def scenario():
        users = [LiveUser(server, {**SMALL, "delay_ms": 20}, jpeg=stamped(number)) for number in range(6)]
        for user in users:
            await user.__aenter__()
        try:
            frames = await asyncio.gather(*(user.frames(4) for user in users))
            replicas = (await asyncio.to_thread(server.health))["replicas"]
        finally:
            for user in users:
                await user.__aexit__(None, None, None)
        return frames, replicas, users

    frames, replicas, users = asyncio.run(scenario())
    for number, received in enumerate(frames):
        assert [read_stamp(frame) for frame in received] == [number] * 4
    assert sorted(replica["users"] for replica in replicas) == [3, 3]  # each new user to the one with fewer
    assert all(user.messages == [] for user in users)
    metrics = httpx.get(f"{server.http}/metrics").text
    frames_out = {
        sample.labels["replica"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "live_diffusion_frames_out_total" and sample.labels["source"] == "live"
    }
    assert frames_out.keys() == {"0", "1"} and all(count >= 12 for count in frames_out.values()), frames_out


def test_a_stream_opened_before_the_websocket_finds_its_session(server):
    """The stream asks first: its user is pinned to a replica then, and the websocket that follows
    goes there too, whichever replica has fewer users by then."""

    async def scenario():
        user = LiveUser(server, SMALL, user_id=str(uuid.uuid4()), jpeg=stamped(42))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /api/stream/{user.user_id.upper()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()  # the stream's request is on its way before the websocket connects
        async with user:
            frames = await asyncio.wait_for(mjpeg_parts(reader, 2), 60)
        writer.close()
        return frames

    assert [read_stamp(frame) for frame in asyncio.run(scenario())] == [42, 42]


async def mjpeg_parts(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The first `count` JPEGs of a raw HTTP/1.1 MJPEG response (chunked transfer encoding)."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = b""
    parts: list[bytes] = []
    while len(parts) < count:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        body += (await reader.readexactly(size + 2))[:-2]  # a chunk and its CRLF
        while (start := body.find(b"Content-Length: ")) >= 0 and (end := body.find(b"\r\n\r\n", start)) >= 0:
            length = int(body[start + 16 : body.find(b"\r\n", start)])
            if len(body) < end + 4 + length:
                break
            parts.append(body[end + 4 : end + 4 + length])
            body = body[end + 4 + length :]
    return parts[:count]


def test_a_dead_replica_takes_only_its_users_who_reconnect_while_ray_restarts_it(server):
    async def scenario():
        users = [LiveUser(server, {**SMALL, "delay_ms": 20}, jpeg=stamped(number)) for number in range(4)]
        for user in users:
            await user.__aenter__()
        await asyncio.gather(*(user.frames(2) for user in users))
        health = await asyncio.to_thread(server.health)
        victim = health["replicas"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        outcomes = await asyncio.gather(*(user.frames(6, timeout=30) for user in users), return_exceptions=True)
        for user in users:
            await user.__aexit__(None, None, None)
        # The killed replica's users reconnect: a new session, on the live replica.
        async with LiveUser(server, SMALL, jpeg=stamped(7)) as again:
            reconnected = await again.frames(2)
        return users, outcomes, reconnected

    users, outcomes, reconnected = asyncio.run(scenario())
    lost = [user for user, outcome in zip(users, outcomes) if isinstance(outcome, BaseException)]
    kept = [user for user, outcome in zip(users, outcomes) if not isinstance(outcome, BaseException)]
    assert len(lost) == 2 and len(kept) == 2  # two users on each replica
    for user in lost:
        assert user.messages[-1]["status"] == "error" and "reconnect" in user.messages[-1]["message"]
    for user in kept:
        assert user.messages == []
    assert [read_stamp(frame) for frame in reconnected] == [7, 7]
    server.wait_for(lambda health: all(replica["alive"] for replica in health["replicas"]), timeout=120)
