"""The real server against hostile and unlucky clients: malformed messages, parked frames, junk that
should not keep a session alive, other spellings of a user id, foreign web origins, slow and
abandoned uploads, and a model that hangs or ends its thread. Each affects only its own client, and
/api/health says what is true throughout."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import httpx
import numpy as np
import psutil
import pytest
import simplejpeg
import websockets

from bench.live import Client, camera_jpeg, jpeg_size, mjpeg_frames, run_server, take

SMALL = {"width": 256, "height": 256}
STUDIO = "https://studio.example"


@pytest.fixture(scope="module")
def server():
    with run_server(
        "--pipeline", "tests.fault_pipeline", "--max-users", "50", "--idle-timeout", "4", "--frame-deadline", "1",
        "--upload-timeout", "2", "--process-timeout", "20", "--allowed-origins", STUDIO, "--log-level", "debug",
    ) as s:
        yield s


def run(coro):
    return asyncio.run(coro)


async def streams_normally(client: Client, http: httpx.AsyncClient, server) -> None:
    """The client's conversation goes on: it is asked for a frame and its stream shows it."""
    frame = asyncio.create_task(take(mjpeg_frames(server, client.user_id, http), 1))
    pump = asyncio.create_task(client.pump(SMALL))
    try:
        assert jpeg_size((await asyncio.wait_for(frame, 30))[0]) == (256, 256)
    finally:
        pump.cancel()


MALFORMED = [
    ("60,000 brackets", "[" * 60_000, "nested too deeply"),
    ("deep objects", '{"a":' * 10_000 + "1" + "}" * 10_000, "nested too deeply"),
    ("huge integer", "1" * 5_000, "not usable JSON"),
    ("invalid UTF-8", b'{"status": "\xff\xfe next_frame"}', "not valid UTF-8"),
    ("not JSON", "{oops", "not valid JSON"),
    ("empty", "", "not valid JSON"),
    ("a number", "12", "'status' key"),
]


@pytest.mark.parametrize("where", ["control", "params"])
@pytest.mark.parametrize("name, message, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_text_gets_an_error_and_the_conversation_goes_on(server, name, message, expected, where):
    async def scenario():
        client = Client(server)
        await client.connect()
        if where == "params":
            await client.ws.send(json.dumps({"status": "next_frame"}))
        if isinstance(message, bytes):
            await client.ws.send(message, text=True)  # a text frame whose bytes are not UTF-8
        else:
            await client.ws.send(message)
        error = await client.recv_until("error")
        if where == "params" and expected == "'status' key":
            expected_here = "must be a JSON object"
        else:
            expected_here = expected
        assert expected_here in error["message"], error
        async with httpx.AsyncClient(timeout=30) as http:
            await streams_normally(client, http, server)
        await client.close()

    run(scenario())


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"delay_ms": 1e999}, "delay_ms"),  # JSON's 1e999 is infinity
        ({"delay_ms": float("nan")}, "delay_ms"),
        ({"prompt": "\ud800 a lone surrogate"}, "prompt"),
        ({"width": 10**400}, "width"),
        ({"prompt": [[[[["deep"]]]]]}, "prompt"),
    ],
    ids=["infinity", "nan", "lone surrogate", "huge width", "nested prompt"],
)
def test_parameter_values_that_are_not_values_are_refused(server, values, expected):
    async def scenario():
        client = Client(server)
        await client.connect()
        await client.ws.send(json.dumps({"status": "next_frame"}))
        await client.ws.send(json.dumps({**SMALL, **values}))
        await client.ws.send(camera_jpeg(1))
        error = await client.recv_until("error")
        assert expected in error["message"], error
        async with httpx.AsyncClient(timeout=30) as http:
            await streams_normally(client, http, server)
        await client.close()

    run(scenario())


def test_junk_does_not_keep_a_session_alive(server):
    """Only a valid frame or parameter message counts as activity: a client sending junk every
    second still reaches --idle-timeout (4 s here)."""

    async def scenario():
        client = Client(server)
        await client.connect()

        async def junk() -> None:
            while True:
                await client.ws.send(json.dumps({"status": "still here"}))
                await asyncio.sleep(1)  # pacing the client, not waiting for the server

        sender = asyncio.create_task(junk())
        timeout = await client.recv_until("timeout", timeout=60)
        sender.cancel()
        assert "no frame or parameters for 4 s" in timeout["message"]
        assert sum(m["status"] == "error" for m in client.messages) >= 3  # each junk message got its error

    run(scenario())


def test_a_client_that_sends_only_bad_messages_is_disconnected(server):
    async def scenario():
        client = Client(server)
        await client.connect()
        for _ in range(99):
            await client.ws.send("junk")
            await client.recv_until("error")
        await client.ws.send("junk")
        assert (await client.recv_until("error"))["message"] == "Message is not valid JSON"
        assert await client.recv_until("error") == {"status": "error", "message": "100 bad messages in a row: closing"}
        with pytest.raises(websockets.ConnectionClosed):
            await client.recv(30)
        server.wait_for_users(0)

    run(scenario())


def test_a_client_that_sends_only_damaged_frames_is_disconnected(server):
    """Frames whose header is whole but whose data is cut pass the event loop's check; each fails in the
    worker with its own error. 99 of them, a good frame, then 100: the good one starts the count again,
    and the hundredth in a row ends the session."""
    whole = camera_jpeg(7)
    damaged = whole[: len(whole) // 2]

    async def scenario():
        client = Client(server)
        await client.connect()
        outputs: list[bytes] = []

        async def watch(http: httpx.AsyncClient) -> None:  # the stream stays open: frames are asked for
            async for frame in mjpeg_frames(server, client.user_id, http):
                outputs.append(frame)

        async with httpx.AsyncClient(timeout=30) as http:
            stream = asyncio.create_task(watch(http))
            try:
                for jpeg in [damaged] * 99 + [camera_jpeg(8)] + [damaged] * 100:
                    await client.recv_until("send_frame")
                    await client.send_frame(SMALL, jpeg)
                closing = await client.recv_until("error")
                while closing["message"].startswith("Frame is a damaged JPEG"):  # the last frame's own error
                    closing = await client.recv_until("error")
                assert closing == {"status": "error", "message": "100 damaged frames in a row: closing"}
                with pytest.raises(websockets.ConnectionClosed):
                    await client.recv(30)
            finally:
                stream.cancel()
        errors = [m["message"] for m in client.messages if m["status"] == "error"]
        assert sum(e.startswith("Frame is a damaged JPEG image") for e in errors) == 199
        assert [jpeg_size(frame) for frame in outputs] == [(256, 256)]  # the good frame's output
        server.wait_for_users(0)

    run(scenario())


def big_camera_jpeg(seed: int) -> bytes:
    """A 4096x1024 camera-like frame (the pixel cap), about half a megabyte."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1024, 0:4096]
    base = np.stack([x * 255 / 4096, y * 255 / 1024, np.full_like(x, seed * 37 % 255)], axis=-1)
    return simplejpeg.encode_jpeg(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8), quality=80)


def test_parked_frames_do_not_grow_the_server(server):
    """40 sockets each sending big frames unasked, without a stream and then with one: frames are
    kept compressed, one per session, and decoded only when the model takes them."""
    frames = [big_camera_jpeg(seed) for seed in range(4)]

    async def scenario():
        process = psutil.Process(server.proc.pid)
        clients = [Client(server) for _ in range(40)]
        for client in clients:
            await client.connect()
        rss_before = process.memory_info().rss
        for round_ in range(5):  # never asked, no stream open: nothing is kept
            for client in clients:
                await client.send_frame(SMALL, frames[round_ % len(frames)])
        for client in clients:
            await client.recv_until("wait")
        rss_parked = process.memory_info().rss
        async with httpx.AsyncClient(timeout=60) as http:  # with streams: one frame kept, then generated
            streams = [mjpeg_frames(server, c.user_id, http) for c in clients]
            # 40 big frames generated one after another: on a loaded 2-core machine the last comes after
            # take()'s default minute, so each stream waits as long as the whole.
            firsts = [asyncio.create_task(take(stream, 1, timeout=240)) for stream in streams]
            await asyncio.to_thread(server.wait_for, lambda health: health["streams"] == len(clients))
            for round_ in range(3):
                for client in clients:
                    await client.send_frame(SMALL, frames[round_ % len(frames)])
            assert all(len(frame) == 1 for frame in await asyncio.wait_for(asyncio.gather(*firsts), 250))
            rss_streaming = process.memory_info().rss
        for client in clients:
            await client.close()
        server.wait_for_users(0)
        growth = max(rss_parked, rss_streaming) - rss_before
        assert growth < 100 * 2**20, (rss_before, rss_parked, rss_streaming)

    run(scenario())


@pytest.mark.parametrize("spelling", [str.upper, lambda u: "{" + u + "}", lambda u: "urn:uuid:" + u, lambda u: u.replace("-", "")])
def test_one_uuid_spelled_another_way_is_the_same_user(server, spelling):
    async def scenario():
        owner = Client(server)
        await owner.connect()
        other = spelling(owner.user_id)
        intruder = Client(server, other)
        refusal = await intruder.connect()
        assert refusal["status"] == "error" and "already connected" in refusal["message"]
        async with httpx.AsyncClient(timeout=30) as http:  # the stream finds the session by any spelling
            frame = asyncio.create_task(take(mjpeg_frames(server, other, http), 1))
            pump = asyncio.create_task(owner.pump(SMALL))
            assert len(await asyncio.wait_for(frame, 30)) == 1
            pump.cancel()
            token = (await http.get(f"{server.http}/api/viewer-token/{other}")).json()["viewer_token"]
            assert token
        await owner.close()

    run(scenario())


async def ws_status(server, user_id: str, headers: dict[str, str]) -> int:
    """101 when the websocket opens, else the HTTP status of the refused handshake."""
    try:
        async with websockets.connect(f"{server.ws}/api/ws/{user_id}", additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["status"] == "connected"
            return 101
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


@pytest.mark.parametrize(
    "origin, allowed",
    [
        (None, True),  # not a browser: curl, scripts, Python clients
        ("same", True),
        ("http://localhost:5173", True),  # a page on this machine (the web page's dev server)
        ("http://127.0.0.1:9999", True),
        (STUDIO, True),  # --allowed-origins
        ("https://evil.example", False),
        ("null", False),  # a sandboxed frame or a file
        ("http://127.0.0.1.evil.example", False),
    ],
)
def test_requests_from_foreign_origins_are_refused(server, origin, allowed):
    headers = {} if origin is None else {"Origin": server.http if origin == "same" else origin}
    user_id = str(uuid.uuid4())
    assert run(ws_status(server, user_id, headers)) == (101 if allowed else 403)
    expected = {True: {404}, False: {403}}[allowed]  # the session is gone: 404 when let through
    assert httpx.get(f"{server.http}/api/stream/{user_id}", headers=headers).status_code in expected
    assert httpx.get(f"{server.http}/api/viewer-token/{user_id}", headers=headers).status_code in expected
    process = httpx.post(f"{server.http}/api/process", headers=headers, data={"prompt": "x"})
    assert process.status_code == (400 if allowed else 403), process.text  # 400: no image
    if not allowed:
        assert "--allowed-origins" in process.json()["detail"]


def test_cors_is_granted_only_to_allowed_origins(server):
    for origin, granted in [(STUDIO, STUDIO), ("https://evil.example", None), ("http://localhost:5173", None)]:
        response = httpx.get(f"{server.http}/api/settings", headers={"Origin": origin})
        assert response.headers.get("access-control-allow-origin") == granted, origin


def test_a_host_name_that_is_not_loopback_is_refused_on_a_loopback_server(server):
    """DNS rebinding: a page at http://attacker.example:PORT resolving to 127.0.0.1."""
    response = httpx.get(f"{server.http}/api/settings", headers={"Host": f"attacker.example:{server.port}"})
    assert response.status_code == 403 and "loopback" in response.json()["detail"]
    for host in ("localhost", "127.0.0.1", "[::1]"):
        assert httpx.get(f"{server.http}/api/settings", headers={"Host": f"{host}:{server.port}"}).status_code == 200


def test_ids_and_viewer_tokens_never_reach_the_log(server):
    async def scenario():
        client = Client(server)
        await client.connect()
        async with httpx.AsyncClient(timeout=30) as http:
            frame = asyncio.create_task(take(mjpeg_frames(server, client.user_id.upper(), http), 1))
            pump = asyncio.create_task(client.pump(SMALL))
            await asyncio.wait_for(frame, 30)
            token = (await http.get(f"{server.http}/api/viewer-token/{client.user_id}")).json()["viewer_token"]
            await take(mjpeg_frames(server, token, http, path="view"), 1)
            await http.get(f"{server.http}/api/stream/{client.user_id.replace('-', '')}x")
            pump.cancel()
        await client.close()
        again = Client(server, client.user_id.replace("-", ""))  # another spelling, in the websocket's log line
        await again.connect()
        await again.close()
        return client.user_id, token

    user_id, token = run(scenario())
    server.wait_for_users(0)
    log = server.log.lower()
    assert user_id[:8] in log  # sessions can still be told apart
    for secret in (user_id, user_id.replace("-", ""), user_id[9:], token.lower(), token[8:].lower()):
        assert secret not in log, secret


def post_image(server, data=None, timeout=60.0) -> httpx.Response:
    files = {"file": ("cam.jpg", camera_jpeg(3), "image/jpeg")}
    return httpx.post(f"{server.http}/api/process", files=files, data={**SMALL, **(data or {})}, timeout=timeout)


class TricklingUpload:
    """An upload that sends its headers and a little of its body, then nothing (a slow client)."""

    def __init__(self, server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        head = (
            f"POST /api/process HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n--xyz\r\n"
        )
        self.sock.sendall(head.encode())

    def response(self) -> bytes:
        self.sock.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def test_slow_uploads_do_not_lock_out_other_requests(server):
    trickling = [TricklingUpload(server) for _ in range(6)]
    try:
        response = post_image(server)  # while six uploads trickle
        assert response.status_code == 200, response.text
        assert httpx.get(f"{server.http}/api/settings").status_code == 200
        for upload in trickling:  # each gets 408 after --upload-timeout (2 s)
            assert upload.response().startswith(b"HTTP/1.1 408"), upload
    finally:
        for upload in trickling:
            upload.close()


def test_a_client_that_leaves_during_its_upload_leaves_no_traceback(server):
    mark = len(server.lines)
    upload = TricklingUpload(server)
    upload.sock.sendall(b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + camera_jpeg(1)[:500])
    upload.close()
    server.wait_for_log("one-shot: the client left during its upload")
    assert post_image(server).status_code == 200
    assert "Traceback" not in "\n".join(server.lines[mark:])


def test_a_hang_past_the_frame_deadline_fails_its_frames_and_health_says_stalled(server):
    """--frame-deadline 1 and a model call of 4 s: the websocket client and the one-shot request
    hear at the deadline; meanwhile health is 503 'stalled' and new one-shot requests get 503;
    then the model returns and everything works as before."""

    async def scenario():
        client = Client(server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            stream = asyncio.create_task(take(mjpeg_frames(server, client.user_id, http), 1))
            await client.recv_until("send_frame")
            await client.send_frame({"delay_ms": 4000, **SMALL}, camera_jpeg(0))
            error = await client.recv_until("error")
            assert error["message"] == "The model took longer than 1 s for this frame; it was dropped"
            pump = asyncio.create_task(client.pump({"delay_ms": 0, **SMALL}))  # its next frame waits for the model
            health = await http.get(f"{server.http}/api/health")
            assert health.status_code == 503 and health.json()["status"] == "stalled", health.json()
            busy = await http.post(
                f"{server.http}/api/process", files={"file": ("a.jpg", camera_jpeg(1), "image/jpeg")}, data=SMALL
            )
            assert busy.status_code == 503 and "Retry-After" in busy.headers, busy.text
            assert len(await asyncio.wait_for(stream, 30)) == 1  # the next frame is generated as before
            assert (await http.get(f"{server.http}/api/health")).json()["status"] == "ok"
            pump.cancel()
        await client.close()

    run(scenario())
    response = post_image(server, {"delay_ms": "4000"})
    assert response.status_code == 504 and "longer than 1 s" in response.json()["detail"]
    server.wait_for(lambda h: h["status"] == "ok")


def test_a_model_that_ends_its_thread_is_restarted(server):
    async def scenario():
        client = Client(server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            stream = asyncio.create_task(take(mjpeg_frames(server, client.user_id, http), 1))
            await client.recv_until("send_frame")
            await client.send_frame({"fault": "end_thread", **SMALL}, camera_jpeg(0))
            assert (await client.recv_until("error"))["message"].startswith("Model error: ThreadKiller")
            health = await asyncio.to_thread(server.wait_for, lambda h: h["worker"]["restarts"] >= 1 and h["status"] == "ok")
            assert health["worker"]["alive"]
            pump = asyncio.create_task(client.pump({"fault": "none", **SMALL}))
            assert len(await asyncio.wait_for(stream, 30)) == 1
            pump.cancel()
        await client.close()

    run(scenario())


# --- holes found by reading the code (issue 16): each test failed before its fix ------------------------


@pytest.fixture(scope="module")
def wide_server():
    """Bound beyond loopback, as for phones on the LAN, with tight connection limits."""
    with run_server(
        "--pipeline", "bench.echo_pipeline", "--host", "0.0.0.0", "--header-timeout", "3",
        "--max-connections-per-address", "8", "--log-level", "debug",
    ) as s:
        yield s


def lan_address() -> str:
    from server.origins import machine_addresses

    addresses = [a for a in machine_addresses() if ":" not in a and not a.startswith("127.")]
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    return addresses[0]


def test_a_wide_bound_server_answers_only_its_own_names(wide_server):
    """DNS rebinding on --host 0.0.0.0: a page at http://attacker.example:PORT resolving to this machine."""
    url = f"{wide_server.http}/api/settings"
    refused = httpx.get(url, headers={"Host": f"attacker.example:{wide_server.port}"})
    assert refused.status_code == 400 and "--allowed-hosts attacker.example" in refused.json()["detail"]
    for host in ("127.0.0.1", "localhost", socket.gethostname(), lan_address()):
        assert httpx.get(url, headers={"Host": f"{host}:{wide_server.port}"}).status_code == 200, host


def test_an_origin_is_the_servers_own_only_with_its_port(wide_server):
    """A page on another port of this machine (port 80 when none is said) is another origin."""
    lan, port = lan_address(), wide_server.port
    url = f"{wide_server.http}/api/viewer-token/{uuid.uuid4()}"
    for origin, status in [(f"http://{lan}:{port}", 404), (f"http://{lan}", 403), (f"http://{lan}:{port + 1}", 403)]:
        response = httpx.get(url, headers={"Host": f"{lan}:{port}", "Origin": origin})
        assert response.status_code == status, (origin, response.text)


def test_allowed_hosts_replace_the_machines_names():
    from server.origins import allowed_hosts

    assert allowed_hosts(["Live.Example.com", "*.studio.example", "fe80::1"]) == sorted(
        ["live.example.com", "*.studio.example", "[fe80::1]", "localhost", "127.0.0.1", "[::1]"]
    )
    default = allowed_hosts([])
    assert socket.gethostname().lower() in default and "127.0.0.1" in default and "attacker.example" not in default


def test_slow_request_headers_are_cut_off(wide_server):
    """A client that connects and sends nothing, and one that sends its second request's headers a
    byte at a time on a kept-alive connection: both are disconnected after --header-timeout (3 s),
    with a line in the log, long before they could finish."""

    async def trickle() -> bool:
        """True when the server closed the connection before the trickled request was complete."""
        reader, writer = await asyncio.open_connection("127.0.0.1", wide_server.port)
        writer.write(f"GET /api/settings HTTP/1.1\r\nHost: 127.0.0.1:{wide_server.port}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        slow = f"GET /api/settings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {'a' * 300}\r\n\r\n".encode()
        try:
            for byte in slow:
                writer.write(bytes([byte]))
                await writer.drain()
                try:  # pacing the client; an answer now is the server closing the connection
                    if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                        return True
                except asyncio.TimeoutError:
                    pass
            return False
        except ConnectionError:
            return True
        finally:
            writer.close()

    async def silent() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", wide_server.port)
        try:
            return await asyncio.wait_for(reader.read(1), 60) == b""
        finally:
            writer.close()

    async def scenario():
        return await asyncio.gather(trickle(), silent())

    assert run(scenario()) == [True, True]
    wide_server.wait_for_log("did not send its request headers within 3 s")
    assert httpx.get(f"{wide_server.http}/api/settings").status_code == 200


def test_connections_from_one_address_are_capped(wide_server):
    """8 websockets from 127.0.0.1 (--max-connections-per-address 8): a ninth connection is closed
    as soon as it is made, with a line in the log; once one of the 8 closes, requests go through."""

    async def scenario():
        clients = [Client(wide_server) for _ in range(8)]
        for client in clients:
            assert (await client.connect())["status"] == "connected"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", wide_server.port)
            try:
                assert await asyncio.wait_for(reader.read(1), 30) == b""  # closed at once, not after 3 s of silence
            except ConnectionError:
                pass
            finally:
                writer.close()
            await asyncio.to_thread(wide_server.wait_for_log, "refused a connection from 127.0.0.1: 8 connections")
        finally:
            await clients[0].close()
        async with httpx.AsyncClient(timeout=30) as http:
            while True:  # the server sees the close soon; until then a request may still be refused
                try:
                    if (await http.get(f"{wide_server.http}/api/settings")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        for client in clients[1:]:
            await client.close()

    run(scenario())
    wide_server.wait_for_users(0)


def test_the_owner_gets_its_stream_when_strangers_hold_all_the_others(server):
    """Someone who knows a user id opens the session's 4 streams first; the owner's page (with the
    stream token its websocket was sent) still gets its stream, in place of a stranger's, and a fifth
    stranger is refused."""

    async def scenario():
        owner = Client(server)
        token = (await owner.connect())["stream_token"]
        url = f"{server.http}/api/stream/{owner.user_id}"
        async with httpx.AsyncClient(timeout=60) as http:
            opened: list[asyncio.Future[int]] = [asyncio.get_running_loop().create_future() for _ in range(4)]

            async def stranger(index: int) -> None:
                async with http.stream("GET", url) as response:
                    opened[index].set_result(response.status_code)
                    async for _ in response.aiter_bytes():
                        pass

            strangers = [asyncio.create_task(stranger(index)) for index in range(4)]
            assert await asyncio.wait_for(asyncio.gather(*opened), 30) == [200] * 4
            assert (await http.get(url)).status_code == 429  # a fifth stranger
            frames = asyncio.create_task(take(mjpeg_frames(server, f"{owner.user_id}?stream_token={token}", http), 1))
            pump = asyncio.create_task(owner.pump(SMALL))
            try:
                done, _ = await asyncio.wait(strangers, timeout=30, return_when=asyncio.FIRST_COMPLETED)
                assert len(done) == 1  # one stranger's stream made room
                assert jpeg_size((await asyncio.wait_for(frames, 30))[0]) == (256, 256)
                assert sum(task.done() for task in strangers) == 1
            finally:
                pump.cancel()
                for task in strangers:
                    task.cancel()
        await owner.close()

    run(scenario())
    server.wait_for_users(0)


def test_every_spelling_of_a_user_id_is_redacted_from_every_log_line(server):
    """Any spelling the server accepts (dashes moved or gone, braces, urn:uuid:, upper case, percent-
    encoded in a path or a query string) is redacted from every line, the access log's included."""
    user_id = str(uuid.uuid4())
    digits = user_id.replace("-", "")
    spellings = [
        user_id.upper(),
        "{" + user_id + "}",
        "urn:uuid:" + user_id,
        digits,
        "-".join([digits[:3], digits[3:17], digits[17:30], digits[30:]]),  # dashes moved
        "%7B" + "%2D".join([digits[:5], digits[5:]]) + "%7D",  # percent-encoded
        f"%{ord(digits[0]):02X}" + digits[1:],  # a digit percent-encoded
    ]

    async def scenario():
        owner = Client(server, spellings[0])
        await owner.connect()
        async with httpx.AsyncClient(timeout=30) as http:
            for spelling in spellings:
                await http.post(f"{server.http}/api/process?user_id={spelling}", data={"prompt": "x"})
                await http.get(f"{server.http}/api/viewer-token/{spelling}")
                intruder = Client(server, spelling)
                assert "already connected" in (await intruder.connect())["message"]
                await intruder.close()
        await owner.close()

    run(scenario())
    marker = uuid.uuid4().hex[:12]  # not a UUID's 32 digits: shown as is
    httpx.get(f"{server.http}/api/settings?marker={marker}")
    server.wait_for_log(marker)
    lines = "\n".join(server.lines).lower()
    assert digits[:8] in lines  # sessions can still be told apart
    from urllib.parse import unquote

    for line in lines.splitlines():
        assert digits[8:] not in unquote(line).replace("-", ""), line


def test_a_flood_of_parameters_with_empty_frames_is_neither_activity_nor_a_timer_each(server):
    """A client that answers nothing and floods valid parameters with empty frames ("no frame yet"):
    the session still ends at --idle-timeout (4 s), and it is asked for frames no faster than one
    retry at a time (one every 20 ms), however fast it floods."""

    async def scenario():
        client = Client(server)
        await client.connect()
        asked = 0
        ended: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

        async def read() -> None:
            nonlocal asked
            while True:
                message = await client.recv(60)
                if message["status"] == "send_frame":
                    asked += 1
                elif message["status"] in ("timeout", "error"):
                    ended.set_result(message)
                    return

        async def flood() -> int:
            sent = 0
            try:
                while not ended.done():
                    for _ in range(20):
                        await client.send_frame(SMALL, b"")
                    sent += 20
                    await asyncio.sleep(0.001)  # let the reader read
            except websockets.ConnectionClosed:  # the server ended the session: the reader has its reason
                await asyncio.wait_for(asyncio.shield(ended), 30)
            return sent

        async with httpx.AsyncClient(timeout=60) as http:
            stream = asyncio.create_task(take(mjpeg_frames(server, client.user_id, http), 1))  # frames are asked for
            reader = asyncio.create_task(read())
            started = time.monotonic()
            sent = await asyncio.wait_for(flood(), 60)
            elapsed = time.monotonic() - started
            stream.cancel()
            reader.cancel()
        message = ended.result()
        assert message["status"] == "timeout" and "4 s" in message["message"], message
        assert sent > 500, sent  # a flood indeed
        assert asked <= elapsed / 0.02 + 5, (asked, elapsed, sent)

    run(scenario())
    server.wait_for_users(0)
