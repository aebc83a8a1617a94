"""Read-only viewer links on the real server: any number of viewers get the owner's frames, the very
same JPEG bytes, for the inference of one stream; the link is not the session id, cannot send frames
or take the owner's stream, and dies with the session."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import websockets

from bench.live import Client, jpeg_size, mjpeg_frames, run_server, take

ECHO = ("--pipeline", "bench.echo_pipeline")
PARAMS = {"delay_ms": 150, "width": 256, "height": 256}


@pytest.fixture(scope="module")
def server():
    with run_server(*ECHO) as s:
        yield s


async def view_frames(server, token: str, http: httpx.AsyncClient):
    """The JPEG parts of /api/view/{token}: the same multipart stream as /api/stream."""
    async for frame in mjpeg_frames(server, token, http, path="view"):
        yield frame


async def viewer_token(server, user_id: str, http: httpx.AsyncClient) -> str:
    response = await http.get(f"{server.http}/api/viewer-token/{user_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["view_path"] == f"/api/view/{body['viewer_token']}"
    return body["viewer_token"]


def metric(server, name: str) -> float:
    for line in httpx.get(f"{server.http}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_three_viewers_get_the_owners_frames_for_one_inference_each(server):
    """The owner's camera sends six frames, no more: the model runs six times, whatever the number of
    viewers, and each viewer gets those six outputs, byte for byte, in order."""
    frames = 6

    async def scenario():
        owner = Client(server)
        await owner.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            token = await viewer_token(server, owner.user_id, http)
            assert token != owner.user_id and owner.user_id not in token
            # The viewers are watching before the first frame, so they can see every one of them.
            viewers = [asyncio.create_task(take(view_frames(server, token, http), frames)) for _ in range(3)]
            # Nothing else is on the model: no other session, no model call left over from a test before.
            await asyncio.to_thread(
                server.wait_for, lambda h: h["viewers"] == 3 and h["users"] == 1 and h["worker"]["busy_s"] is None
            )
            watching = metric(server, "live_diffusion_viewers")
            generated_before = server.health()["frames_generated"]
            owner_stream = mjpeg_frames(server, owner.user_id, http)
            pump = asyncio.create_task(owner.pump(PARAMS, frames=frames))  # answers six send_frame, then stops
            owner_frames = await take(owner_stream, frames)
            viewer_frames = await asyncio.gather(*viewers)
            await pump
            generated = server.health()["frames_generated"] - generated_before
        await owner.close()
        return owner_frames, viewer_frames, generated, watching

    owner_frames, viewer_frames, generated, watching = asyncio.run(scenario())
    assert watching == 3
    assert len(set(owner_frames)) == frames  # six different frames (each camera frame differs)
    for seen in viewer_frames:
        assert seen == owner_frames  # the same frames, byte for byte, in the same order
    assert generated == len(owner_frames)  # one inference per frame shown, none for the viewers
    assert {jpeg_size(f) for f in owner_frames} == {(256, 256)}
    server.wait_for_users(0)
    assert metric(server, "live_diffusion_viewers") == 0


def test_a_viewer_joining_late_sees_the_latest_frame_at_once(server):
    async def scenario():
        owner = Client(server)
        await owner.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            token = await viewer_token(server, owner.user_id, http)
            owner_stream = mjpeg_frames(server, owner.user_id, http)
            pump = asyncio.create_task(owner.pump({"delay_ms": 0, "width": 256, "height": 256}, frames=2))
            owner_frames = await take(owner_stream, 2)
            await pump  # no more frames come: the viewer must get the last one from the slot
            late = await take(view_frames(server, token, http), 1, timeout=5)
        await owner.close()
        return owner_frames, late

    owner_frames, late = asyncio.run(scenario())
    assert late == owner_frames[-1:]


def test_the_link_dies_with_the_session(server):
    async def scenario():
        owner = Client(server)
        await owner.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            token = await viewer_token(server, owner.user_id, http)
            viewer = view_frames(server, token, http)
            pump = asyncio.create_task(owner.pump(PARAMS))
            owner_stream = mjpeg_frames(server, owner.user_id, http)
            await take(owner_stream, 1)
            assert len(await take(viewer, 1)) == 1
            pump.cancel()
            await owner.close()
            rest = await asyncio.wait_for(take(viewer, 1000), 10)  # the viewer's response ends
            assert len(rest) < 1000
            server.wait_for_users(0)
            after = await http.get(f"{server.http}/api/view/{token}")
            token_after = await http.get(f"{server.http}/api/viewer-token/{owner.user_id}")
        return after, token_after

    after, token_after = asyncio.run(scenario())
    assert after.status_code == 404 and "ended" in after.json()["detail"]
    assert token_after.status_code == 404


def test_viewers_of_a_session_are_bounded(server):
    """--max-viewers (8 by default): the ninth viewer of a session is refused, the others go on."""

    async def scenario():
        owner = Client(server)
        await owner.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            token = await viewer_token(server, owner.user_id, http)
            viewers = [asyncio.create_task(take(view_frames(server, token, http), 1)) for _ in range(8)]
            await asyncio.to_thread(server.wait_for, lambda health: health["viewers"] == 8)
            refused = await http.get(f"{server.http}/api/view/{token}")
            owner_stream = asyncio.create_task(take(mjpeg_frames(server, owner.user_id, http), 1))
            pump = asyncio.create_task(owner.pump(PARAMS))
            assert [len(frames) for frames in await asyncio.gather(owner_stream, *viewers)] == [1] * 9
            pump.cancel()
        await owner.close()
        return refused

    refused = asyncio.run(scenario())
    assert refused.status_code == 429 and "limit is 8" in refused.json()["detail"]


@pytest.mark.parametrize("token", ["not-a-token", "A" * 24, str(uuid.uuid4())], ids=["word", "token-shaped", "uuid"])
def test_unknown_token_is_404(server, token):
    response = httpx.get(f"{server.http}/api/view/{token}")
    assert response.status_code == 404
    assert "viewer link" in response.json()["detail"]


def test_unknown_session_has_no_viewer_token(server):
    response = httpx.get(f"{server.http}/api/viewer-token/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "websocket" in response.json()["detail"]


def test_each_session_has_its_own_token(server):
    async def scenario():
        first, second = Client(server), Client(server)
        await first.connect()
        await second.connect()
        async with httpx.AsyncClient(timeout=30) as http:
            tokens = [await viewer_token(server, c.user_id, http) for c in (first, second)]
            again = await viewer_token(server, first.user_id, http)
        await first.close()
        await second.close()
        return tokens, again

    tokens, again = asyncio.run(scenario())
    assert tokens[0] != tokens[1] and again == tokens[0]
    assert len(tokens[0]) >= 22  # not guessable


def test_a_viewer_cannot_send_frames_or_take_the_stream(server):
    async def scenario():
        owner = Client(server)
        await owner.connect()
        async with httpx.AsyncClient(timeout=30) as http:
            token = await viewer_token(server, owner.user_id, http)
            # The token opens no websocket: it is not a session id.
            ws = await websockets.connect(f"{server.ws}/api/ws/{token}")
            refusal = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            # Nothing to post to, and the owner's stream cannot be taken with it.
            posted = await http.post(f"{server.http}/api/view/{token}", content=b"\xff\xd8\xff")
            stream = await http.get(f"{server.http}/api/stream/{token}")
            # The owner goes on undisturbed.
            pump = asyncio.create_task(owner.pump(PARAMS))
            frames = await take(mjpeg_frames(server, owner.user_id, http), 2)
            pump.cancel()
        await owner.close()
        return refusal, posted, stream, frames, owner.messages

    refusal, posted, stream, frames, messages = asyncio.run(scenario())
    assert refusal["status"] == "error" and "Invalid user id" in refusal["message"]
    assert posted.status_code == 405
    assert stream.status_code == 404
    assert len(frames) == 2 and messages == []
