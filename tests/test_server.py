"""The real server on loopback, driven by real websocket and HTTP clients speaking the protocol of
Real-Time-Latent-Consistency-Model (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import httpx
import numpy as np
import psutil
import pytest
import simplejpeg
import websockets

from bench.live import (
    Client,
    LiveUser,
    camera_jpeg,
    camera_pixels,
    jpeg_size,
    mjpeg_frames,
    read_stamp,
    run_server,
    stamp,
    take,
)

ECHO = ("--pipeline", "bench.echo_pipeline")
SMALL = {"width": 256, "height": 256}


@pytest.fixture(scope="module")
def echo_server():
    """The stand-in model (returns its input) behind the real server, with small frame caps."""
    with run_server(*ECHO, "--max-frame-bytes", "200000", "--max-frame-pixels", "100000", "--idle-timeout", "30") as server:
        yield server


def run(coro):
    return asyncio.run(coro)


def test_a_protocol_client_receives_frames_of_the_requested_size(img2img_server):
    async def scenario():
        client = Client(img2img_server)
        connected = await client.connect()
        # The anchor's message, plus the token that lets the owner's stream in past other streams.
        assert {**connected, "stream_token": ""} == {"status": "connected", "message": "Connected", "stream_token": ""}
        assert len(connected["stream_token"]) >= 20
        assert await client.recv() == {"status": "wait"}
        await client.close()
        async with LiveUser(img2img_server, {"prompt": "a cat", "width": 320, "height": 256}) as user:
            frames = await user.frames(3)
        for frame in frames:
            pixels = simplejpeg.decode_jpeg(frame)
            assert pixels.shape == (256, 320, 3)
        assert user.messages == []  # no errors

    run(scenario())


def test_two_users_each_get_their_own_frames(img2img_server):
    async def scenario():
        async with (
            LiveUser(img2img_server, {"prompt": "a cat", **SMALL}) as first,
            LiveUser(img2img_server, {"prompt": "a dog", "width": 320, "height": 256}) as second,
        ):
            first_frames, second_frames = await asyncio.gather(first.frames(3), second.frames(3))
        assert {jpeg_size(f) for f in first_frames} == {(256, 256)}
        assert {jpeg_size(f) for f in second_frames} == {(320, 256)}

    run(scenario())


def test_params_reach_the_server(img2img_server):
    async def scenario():
        async with LiveUser(img2img_server, {"prompt": "a lighthouse at dusk", "strength": 0.7, **SMALL}) as user:
            await user.frames(1)
        line = img2img_server.wait_for_log(f"session {user.user_id[:8]}: params changed")
        assert "a lighthouse at dusk" in line and "strength=" in line

    run(scenario())


BAD_INPUTS = [
    # (what the client does after next_frame, words the error must contain)
    ("not a jpeg", [{"prompt": "x"}, b"hello, not an image"], "not a JPEG"),
    ("png bytes", [{"prompt": "x"}, b"\x89PNG\r\n\x1a\n" + b"\0" * 100], "not a JPEG"),
    ("truncated jpeg", [{"prompt": "x"}, camera_jpeg(1)[:600]], "JPEG"),
    ("over the byte cap", [{}, b"\xff\xd8\xff" + b"\0" * 250_000], "limit is 200000"),
    ("over the pixel cap", [{}, camera_jpeg(2, width=400, height=300)], "limit is 100000 pixels"),
    ("out of range", [{"width": 4096}, camera_jpeg(3)], "width"),
    ("not a multiple of 8", [{"height": 300}, camera_jpeg(3)], "height"),
    ("negative delay", [{"delay_ms": -5}, camera_jpeg(3)], "delay_ms"),
    ("wrong type", [{"width": "big"}, camera_jpeg(3)], "width"),
    ("unknown parameter", [{"colour": "red"}, camera_jpeg(3)], "colour"),
    ("prompt too long", [{"prompt": "x" * 1001}, camera_jpeg(3)], "prompt"),
    ("params not an object", ["[1, 2, 3]", camera_jpeg(3)], "JSON object"),
    ("params not json", ["{oops", camera_jpeg(3)], "not valid JSON"),
]


@pytest.mark.parametrize("name, messages, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_an_error_and_nothing_else_breaks(echo_server, name, messages, expected):
    async def scenario():
        good, bad = Client(echo_server), Client(echo_server)
        await good.connect()
        await bad.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            good_stream = mjpeg_frames(echo_server, good.user_id, http)
            bad_frame = asyncio.create_task(take(mjpeg_frames(echo_server, bad.user_id, http), 1))
            good_pump = asyncio.create_task(good.pump(SMALL))
            await take(good_stream, 2)

            await bad.recv_until("send_frame")
            await bad.ws.send(json.dumps({"status": "next_frame"}))
            for message in messages:
                await bad.ws.send(json.dumps(message) if isinstance(message, (dict, list)) else message)
            error = await bad.recv_until("error")
            assert expected in error["message"], error

            # The bad client is asked again and streams normally; the good one never stopped.
            bad_pump = asyncio.create_task(bad.pump(SMALL))
            assert jpeg_size((await bad_frame)[0]) == (256, 256)
            assert len(await take(good_stream, 2)) == 2
            good_pump.cancel()
            bad_pump.cancel()
        assert bad.messages == [error], bad.messages  # exactly one error for one mistake
        assert good.messages == []
        await good.close()
        await bad.close()
        echo_server.wait_for_users(0)

    run(scenario())


@pytest.mark.parametrize(
    "message, expected",
    [
        (json.dumps({"status": "dance"}), "Unknown status 'dance'"),
        (json.dumps({"hello": 1}), "'status' key"),
        (b"\xff\xd8\xff binary where JSON is expected", "got binary data"),
        ("x" * 70_000, "limit is 65536"),
    ],
    ids=["unknown status", "no status", "binary instead of json", "huge text"],
)
def test_bad_control_message_gets_an_error(echo_server, message, expected):
    async def scenario():
        client = Client(echo_server)
        await client.connect()
        await client.ws.send(message)
        error = await client.recv_until("error")
        assert expected in error["message"]
        async with httpx.AsyncClient(timeout=60) as http:
            frame = asyncio.create_task(take(mjpeg_frames(echo_server, client.user_id, http), 1))
            pump = asyncio.create_task(client.pump(SMALL))
            assert len(await frame) == 1
            pump.cancel()
        await client.close()

    run(scenario())


def test_model_error_reaches_the_client_and_the_next_frame_works(echo_server):
    async def scenario():
        client = Client(echo_server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            stream = mjpeg_frames(echo_server, client.user_id, http)
            first = asyncio.create_task(take(stream, 1))
            await client.recv_until("send_frame")
            await client.send_frame({"fail": True, **SMALL}, camera_jpeg(0))
            error = await client.recv_until("error")
            assert error["message"] == "Model error: RuntimeError: stand-in model failure"
            pump = asyncio.create_task(client.pump({"fail": False, **SMALL}))
            assert jpeg_size((await first)[0]) == (256, 256)
            pump.cancel()
        await client.close()

    run(scenario())


def numbered_jpeg(number: int) -> bytes:
    """A 256x256 camera frame (the output size: the echo model returns it as it is) that carries its number."""
    pixels = camera_pixels(number % 7, 256, 256)
    stamp(pixels, number)
    return simplejpeg.encode_jpeg(pixels, quality=95)


def test_burst_of_frames_keeps_the_latest_and_memory_bounded(echo_server):
    """A client that never waits for send_frame, with a slow model: the newest frame wins, older ones
    are dropped rather than queued, and memory does not grow with the burst."""

    async def scenario():
        client = Client(echo_server)
        await client.connect()
        process = psutil.Process(echo_server.proc.pid)
        burst = [numbered_jpeg(i) for i in range(300)]
        async with httpx.AsyncClient(timeout=60) as http:

            async def watch() -> list[int]:  # the frame numbers shown, until the last one sent
                shown = []
                async for jpeg in mjpeg_frames(echo_server, client.user_id, http):
                    shown.append(read_stamp(jpeg))
                    if shown[-1] == len(burst) - 1:
                        return shown
                raise AssertionError(f"the stream ended after {shown}")

            watcher = asyncio.create_task(watch())
            await client.recv_until("send_frame")  # the stream is open
            rss_before = process.memory_info().rss
            for frame in burst:
                await client.send_frame({"delay_ms": 200, **SMALL}, frame)
            shown = await asyncio.wait_for(watcher, 60)
        rss_after = process.memory_info().rss
        await client.ws.send(json.dumps({"status": "next_frame"}))  # still a working conversation
        await client.close()
        echo_server.wait_for_users(0)
        line = echo_server.wait_for_log(f"session {client.user_id[:8]}: closed")
        frames_in, frames_out, dropped = (
            int(line.split(f" {what}")[0].split()[-1]) for what in ("frames in", "out", "dropped")
        )
        assert shown == sorted(shown), shown  # newer and newer: never an older frame after a newer one
        assert frames_in == 300 and frames_out + dropped == frames_in, line  # each generated or dropped
        # A backlog would generate all 300 (one per 200 ms); latest-wins skips nearly all of them.
        assert frames_out < 150, line
        assert rss_after - rss_before < 50 * 2**20, (rss_before, rss_after)
        assert [m for m in client.messages if m["status"] == "error"] == []

    run(scenario())


def test_closing_the_socket_ends_the_stream_and_frees_the_session(echo_server):
    async def scenario():
        client = Client(echo_server)
        await client.connect()
        echo_server.wait_for_users(1)
        async with httpx.AsyncClient(timeout=30) as http:
            stream = mjpeg_frames(echo_server, client.user_id, http)
            pump = asyncio.create_task(client.pump(SMALL))
            await take(stream, 1)
            pump.cancel()
            await client.close()
            rest = await asyncio.wait_for(take(stream, 1000), 10)  # the response ends: no hanging
            assert len(rest) < 1000
            echo_server.wait_for_users(0)
            assert (await http.get(f"{echo_server.http}/api/stream/{client.user_id}")).status_code == 404

    run(scenario())


def test_unknown_stream_is_404(echo_server):
    response = httpx.get(f"{echo_server.http}/api/stream/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "websocket" in response.json()["detail"]


def test_second_socket_with_the_same_id_is_refused(echo_server):
    async def scenario():
        first = Client(echo_server)
        await first.connect()
        intruder = Client(echo_server, first.user_id)
        refusal = await intruder.connect()
        assert refusal["status"] == "error" and "already connected" in refusal["message"]
        with pytest.raises(websockets.ConnectionClosed):
            await intruder.recv(5)
        async with httpx.AsyncClient(timeout=30) as http:  # the first still streams
            pump = asyncio.create_task(first.pump(SMALL))
            assert len(await take(mjpeg_frames(echo_server, first.user_id, http), 1)) == 1
            pump.cancel()
        await first.close()

    run(scenario())


def test_invalid_user_id_is_refused(echo_server):
    async def scenario():
        client = Client(echo_server, "not-a-uuid")
        refusal = await client.connect()
        assert refusal == {"status": "error", "message": "Invalid user id: expected a UUID"}

    run(scenario())


def test_every_stream_of_a_session_gets_the_frames_and_others_cannot_stop_the_owners(echo_server):
    """Anyone who knows a user id may open a stream of it, but not stop the owner's: every open
    stream gets every frame, up to 4 a session; closing the others leaves the owner's streaming."""

    async def scenario():
        client = Client(echo_server)
        await client.connect()
        async with httpx.AsyncClient(timeout=30) as owner_http, httpx.AsyncClient(timeout=30) as other_http:
            owner = mjpeg_frames(echo_server, client.user_id, owner_http)
            pump = asyncio.create_task(client.pump({"delay_ms": 20, **SMALL}))
            await take(owner, 2)
            others = [mjpeg_frames(echo_server, client.user_id, other_http) for _ in range(3)]
            for other in others:  # each gets frames too
                assert len(await take(other, 1)) == 1
            refused = await other_http.get(f"{echo_server.http}/api/stream/{client.user_id}")
            assert refused.status_code == 429 and "limit is 4" in refused.json()["detail"]
            assert len(await take(owner, 3)) == 3  # the owner's never stopped
            for other in others:
                await other.aclose()
            echo_server.wait_for(lambda health: health["streams"] == 1)
            assert len(await take(owner, 3)) == 3
            pump.cancel()
        await client.close()

    run(scenario())


def test_event_loop_answers_while_a_frame_is_generated(echo_server):
    async def scenario():
        client = Client(echo_server)
        await client.connect()
        async with httpx.AsyncClient(timeout=30) as http:
            stream = asyncio.create_task(take(mjpeg_frames(echo_server, client.user_id, http), 1))
            await client.recv_until("send_frame")
            await client.send_frame({"delay_ms": 3000, **SMALL}, camera_jpeg(0))
            await client.recv_until("wait")
            await asyncio.to_thread(echo_server.wait_for, lambda health: health["worker"]["busy_s"] is not None)
            settings = await http.get(f"{echo_server.http}/api/settings")
            queue = await http.get(f"{echo_server.http}/api/queue")
            answered_before_frame = not stream.done()
            await stream
        assert settings.status_code == 200 and queue.json()["queue_size"] >= 1
        assert answered_before_frame
        await client.close()

    run(scenario())


def test_ping_pong_keeps_one_frame_in_flight(echo_server):
    async def scenario():
        client = Client(echo_server)
        await client.connect()
        async with httpx.AsyncClient(timeout=30) as http:
            stream = mjpeg_frames(echo_server, client.user_id, http)
            frame_task = asyncio.create_task(take(stream, 1))
            assert (await client.recv_until("send_frame"))["status"] == "send_frame"
            await client.send_frame({"delay_ms": 500, **SMALL}, camera_jpeg(0))
            assert await client.recv() == {"status": "wait"}
            with pytest.raises(asyncio.TimeoutError):  # no new request while the frame is generated
                await client.recv(timeout=0.3)
            await frame_task
            assert await client.recv() == {"status": "send_frame"}
        await client.close()

    run(scenario())


def test_settings_queue_and_health(echo_server):
    settings = httpx.get(f"{echo_server.http}/api/settings").json()
    assert settings["info"]["properties"]["input_mode"]["default"] == "image"
    assert settings["input_params"]["properties"]["delay_ms"]["field"] == "range"
    assert settings["max_queue_size"] == 8  # the --max-users default
    assert settings["page_content"] == ""  # the echo pipeline has none (img2img's: tests/test_pipelines.py)
    assert httpx.get(f"{echo_server.http}/api/queue").json() == {"queue_size": 0}
    response = httpx.get(f"{echo_server.http}/api/health")
    health = response.json()
    assert response.status_code == 200 and health["status"] == "ok"
    assert health["model_loaded"] and health["pipeline"] == "echo" and health["max_users"] == 8
    assert health["worker"]["alive"] and not health["worker"]["stalled"] and health["worker"]["busy_s"] is None


def test_limits_server_full_and_idle_timeout():
    with run_server(*ECHO, "--max-users", "1", "--idle-timeout", "1.5") as server:

        async def scenario():
            first = Client(server)
            await first.connect()
            second = Client(server)
            assert await second.connect() == {"status": "error", "message": "Server is full"}
            with pytest.raises(websockets.ConnectionClosed):
                await second.recv(5)
            assert httpx.get(f"{server.http}/api/queue").json() == {"queue_size": 1}
            assert httpx.get(f"{server.http}/api/settings").json()["max_queue_size"] == 1
            # first says nothing more: the idle timeout ends it
            timeout = await first.recv_until("timeout", timeout=10)
            assert "no frame or parameters for 1.5 s" in timeout["message"]
            with pytest.raises(websockets.ConnectionClosed):
                await first.recv(5)
            server.wait_for_users(0)
            third = Client(server)  # the place is free again
            assert (await third.connect())["status"] == "connected"
            await third.close()

        run(scenario())


def test_a_client_waiting_on_a_slow_model_is_not_idle():
    """The idle timeout counts the time the server waits on the client, not the reverse: a frame that
    takes longer than --idle-timeout to generate keeps its session, and the clock starts when the
    client is asked for the next one."""
    with run_server(*ECHO, "--idle-timeout", "1") as server:

        async def scenario():
            client = Client(server)
            await client.connect()
            async with httpx.AsyncClient(timeout=30) as http:
                stream = mjpeg_frames(server, client.user_id, http)
                first = asyncio.create_task(take(stream, 1))
                await client.recv_until("send_frame")
                await client.send_frame({**SMALL, "delay_ms": 3000}, camera_jpeg(1))
                assert len(await asyncio.wait_for(first, 30)) == 1  # three timeouts' worth later
                await client.recv_until("send_frame")  # the session went on: asked for the next frame
                asked = time.monotonic()
                timeout = await client.recv_until("timeout", timeout=10)  # and then silence ends it
                assert time.monotonic() - asked >= 0.9
                assert "no frame or parameters for 1 s" in timeout["message"]
            assert not any(m["status"] == "timeout" for m in client.messages[:-1])

        run(scenario())


def test_max_session_length_ends_a_busy_session():
    with run_server(*ECHO, "--max-session-length", "2") as server:

        async def scenario():
            client = Client(server)
            await client.connect()
            async with httpx.AsyncClient(timeout=30) as http:
                stream = mjpeg_frames(server, client.user_id, http)
                pump = asyncio.create_task(client.pump(SMALL))
                started = time.monotonic()
                frames = await asyncio.wait_for(take(stream, 10_000), 15)  # ends with the session
                assert 1 < time.monotonic() - started < 10
                with pytest.raises(websockets.ConnectionClosed):
                    await pump
            assert frames
            assert any("the limit is 2 s a session" in m.get("message", "") for m in client.messages)
            server.wait_for_users(0)

        run(scenario())


def test_ctrl_c_with_streams_open_ends_them_and_exits_cleanly():
    """uvicorn alone would wait for open MJPEG responses: Ctrl-C tells each client, ends each stream
    and exits with 130 (the shell's code for Ctrl-C), without a traceback."""
    with run_server(*ECHO) as server:

        async def scenario():
            clients = [Client(server) for _ in range(2)]
            async with httpx.AsyncClient(timeout=30) as http:
                for client in clients:
                    await client.connect()
                streams = [mjpeg_frames(server, c.user_id, http) for c in clients]
                pumps = [asyncio.create_task(c.pump({"delay_ms": 100, **SMALL})) for c in clients]
                for stream in streams:
                    await take(stream, 1)
                server.proc.send_signal(signal.SIGINT)
                for stream in streams:  # each response ends (take returns short), none hangs
                    assert len(await take(stream, 10_000, timeout=30)) < 10_000
                for pump in pumps:
                    with pytest.raises(websockets.ConnectionClosed):
                        await asyncio.wait_for(pump, 30)
            for client in clients:
                assert {"status": "timeout", "message": "Server is shutting down"} in client.messages
            assert server.proc.wait(30) == 130
            assert "Traceback" not in server.log

        run(scenario())


def test_grey_and_odd_sized_camera_frames_are_accepted(echo_server):
    grey = simplejpeg.encode_jpeg(np.full((123, 201, 1), 90, np.uint8), colorspace="GRAY")

    async def scenario():
        async with LiveUser(echo_server, SMALL, jpeg=grey) as user:
            (frame,) = await user.frames(1)
        pixels = simplejpeg.decode_jpeg(frame)
        assert pixels.shape == (256, 256, 3)
        assert abs(int(pixels.mean()) - 90) < 8  # the grey came through, cropped and scaled to fill

    run(scenario())


def test_similarity_filter_resends_the_output_of_an_unchanged_camera():
    with run_server(*ECHO, "--similarity-filter", "--max-skips", "3") as server:
        still = camera_jpeg(1)
        changing = [simplejpeg.encode_jpeg(np.full((240, 320, 3), level, np.uint8)) for level in (30, 220)]
        scene = {"moving": False}  # what the camera shows: one pump answers throughout

        async def camera(client: Client) -> None:
            sent = 0
            while True:
                if (await client.recv(60))["status"] == "send_frame":
                    await client.send_frame(SMALL, changing[sent % 2] if scene["moving"] else still)
                    sent += 1

        async def scenario():
            client = Client(server)
            await client.connect()
            async with httpx.AsyncClient(timeout=30) as http:
                stream = mjpeg_frames(server, client.user_id, http)
                pump = asyncio.create_task(camera(client))
                frames = await take(stream, 8)
                health = server.health()
                # Every request got a frame; the model ran for one in (max skips + 1) of them.
                assert health["frames_reused"] >= 5 and health["frames_generated"] <= 3, health
                assert len(set(frames)) == 1
                scene["moving"] = True
                await take(stream, 6)  # the first one or two may still show the still scene
                pump.cancel()
                assert server.health()["frames_generated"] >= health["frames_generated"] + 3
            await client.close()

        asyncio.run(scenario())
