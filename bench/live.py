"""Real clients of the real server, for the tests and the benchmarks: start `python server/main.py` in a
subprocess on a loopback port (`run_server`), and talk to it as the web page and the clients of
Real-Time-Latent-Consistency-Model do (`Client`: websocket ping-pong; `mjpeg_frames`: the MJPEG
stream read over HTTP; `LiveUser`: both at once, as one user), with camera-like frames
(`camera_pixels`) that can carry their number (`stamp`, `read_stamp`).

The benchmarks and the tests import this module; it imports neither.
"""

from __future__ import annotations

import asyncio
import socket
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import numpy as np
import simplejpeg
import websockets

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_MAIN = REPO_ROOT / "server" / "main.py"
LISTENING = re.compile(r"Open https?://\S+:(\d+)$")  # the server's log line once it listens


def server_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class RunningServer:
    def __init__(self, proc: subprocess.Popen[str], port: int = 0) -> None:
        self.proc = proc
        self.port = port  # once it listens (run_server reads it from the log)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the server log:\n{self.log[-4000:]}")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.http}/api/health", timeout=30).json()

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """Poll /api/health until `condition(health)` holds; the health that satisfied it."""
        deadline = time.monotonic() + timeout
        while not condition(health := self.health()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the server's health never satisfied the condition: {health}")
            time.sleep(0.05)
        return health

    def wait_for_users(self, count: int, timeout: float = 30.0) -> None:
        self.wait_for(lambda health: health["users"] == count, timeout)


@contextmanager
def run_server(*args: str, env: dict[str, str] | None = None, startup_timeout: float = 120.0) -> Iterator[RunningServer]:
    """The real server (`python server/main.py ...`) on a free loopback port, stopped with Ctrl-C. It
    picks the port itself (--port 0) and says which: no other process can take it in between.

    With LD_FORK_SERVERS=1 (the tests set it) a server with the default environment is forked from a
    process that has imported torch, diffusers and the server already (`forked_server`): the same
    `server/main.py` code in a process of its own, started in a second instead of ten."""
    command = ["--port", "0", *args]
    if env is None and os.environ.get("LD_FORK_SERVERS") == "1" and not {"--replicas", "--ray-address"} & set(args):
        proc: Any = forked_server(command, server_env(), REPO_ROOT / "tests")
    else:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER_MAIN), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or server_env(),
            cwd=REPO_ROOT / "tests",  # anywhere but the repo root: the server must not care
        )
    server = RunningServer(proc)
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            if proc.poll() is not None:
                server._reader.join(2)
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.log[-4000:]}")
            opened = next((match for line in server.lines if (match := LISTENING.search(line))), None)
            if opened:
                server.port = int(opened.group(1))
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{server.log[-4000:]}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- forked servers ---------------------------------------------------------------------------------
# Importing torch, diffusers and transformers takes most of a miniature server's start (7 of 8 s on
# the project's machines). A multiprocessing forkserver imports them once; each server is a fork of
# it that runs `server.main.main` as `python server/main.py` would. PyTorch is made to be used after
# a fork (its DataLoader workers are forked so); the forkserver itself runs no model and no thread.

FORK_PRELOAD = (
    "server.main", "server.engine", "server.app", "server.scale_out.gateway", "pipelines._tiny", "pipelines.img2img",
    "pipelines.img2img_sd_turbo", "pipelines.img2img_sdxl_lcm_lora", "pipelines.controlnet_canny",
    "pipelines.txt2img", "pipelines._composed", "pipelines._annotators", "bench.echo_pipeline", "compel",
)
_forkserver: Any = None


class ForkedServer:
    """A forked server process, with what run_server and the tests use of a subprocess.Popen."""

    def __init__(self, process: Any, stdout: Any) -> None:
        self.process = process
        self.pid = process.pid
        self.stdout = stdout

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(str(SERVER_MAIN), timeout or 0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.process.kill()


def forked_server(command: list[str], env: dict[str, str], cwd: Path) -> ForkedServer:
    global _forkserver
    import multiprocessing

    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload(list(FORK_PRELOAD))
    reader, writer = _forkserver.Pipe(duplex=False)
    process = _forkserver.Process(target=_serve_forked, args=(command, env, str(cwd), writer), name="server")
    process.start()
    writer.close()
    stdout = os.fdopen(os.dup(reader.fileno()), "r", encoding="utf-8", errors="replace")
    reader.close()
    return ForkedServer(process, stdout)


def _serve_forked(command: list[str], env: dict[str, str], cwd: str, output: Any) -> None:
    """In the forked process: `python server/main.py COMMAND` with stdout and stderr to `output`."""
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    output.close()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [str(SERVER_MAIN), *command]
    from server.main import main

    sys.exit(main(command))


def camera_pixels(seed: int = 0, width: int = 320, height: int = 240, noise: float = 20.0) -> np.ndarray:
    """A camera-like frame, HxWx3 uint8: smooth gradients plus sensor noise, different for each seed.
    At 512x512, `noise=6` makes JPEGs of about 100 KB at quality 90, like a webcam's."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, (seed * 37) % 255)], axis=-1)
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def free_udp_port() -> int:
    """A UDP port nothing listens on at the moment (for --osc-port: the server cannot say which it took)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def camera_jpeg(seed: int = 0, width: int = 320, height: int = 240, quality: int = 85, noise: float = 20.0) -> bytes:
    return simplejpeg.encode_jpeg(camera_pixels(seed, width, height, noise), quality=quality)


# The frame-number stamp: STAMP_COLS x STAMP_ROWS blocks of STAMP_BLOCK pixels in the top-left corner,
# black or white: 20 bits of number and a 4-bit check, which survive JPEG at any usual quality and are
# read back from a 1/8-scale decode (each block is then 4 pixels wide; its centre is sampled).
STAMP_BLOCK = 32
STAMP_COLS, STAMP_ROWS = 6, 4
NUMBER_BITS = 20


def _check(number: int) -> int:
    nibbles = sum((number >> shift) & 0xF for shift in range(0, NUMBER_BITS, 4))
    return (nibbles & 0xF) ^ 0xA  # an all-black corner does not read as frame 0


def stamp(pixels: np.ndarray, number: int) -> None:
    """Paint `number` (below 2**20) into the top-left corner of an HxWx3 uint8 image, in place."""
    bits = (number & ((1 << NUMBER_BITS) - 1)) | (_check(number) << NUMBER_BITS)
    for i in range(STAMP_COLS * STAMP_ROWS):
        row, col = divmod(i, STAMP_COLS)
        value = 255 if (bits >> i) & 1 else 0
        pixels[row * STAMP_BLOCK : (row + 1) * STAMP_BLOCK, col * STAMP_BLOCK : (col + 1) * STAMP_BLOCK] = value


def read_stamp(jpeg: bytes) -> int | None:
    """The number stamped in a JPEG, or None when the corner does not hold a valid stamp."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
    small = simplejpeg.decode_jpeg(jpeg, colorspace="GRAY", min_height=height // 8, min_width=width // 8)
    scale = width / small.shape[1]
    bits = 0
    for i in range(STAMP_COLS * STAMP_ROWS):
        row, col = divmod(i, STAMP_COLS)
        y = int((row + 0.5) * STAMP_BLOCK / scale)
        x = int((col + 0.5) * STAMP_BLOCK / scale)
        if small[y, x, 0] >= 128:
            bits |= 1 << i
    number = bits & ((1 << NUMBER_BITS) - 1)
    return number if bits >> NUMBER_BITS == _check(number) else None


def jpeg_size(data: bytes) -> tuple[int, int]:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return width, height


class Client:
    """A protocol client: one user's websocket, answering send_frame as the web page does."""

    def __init__(self, server: RunningServer, user_id: str | None = None) -> None:
        self.server = server
        self.user_id = user_id or str(uuid.uuid4())
        self.ws: Any = None
        self.messages: list[dict[str, Any]] = []  # everything but send_frame/wait, in order

    async def connect(self) -> dict[str, Any]:
        self.ws = await websockets.connect(f"{self.server.ws}/api/ws/{self.user_id}", max_size=None)
        return await self.recv()

    async def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next message (asyncio.TimeoutError after `timeout` s). Not asyncio.wait_for: before
        Python 3.12 it can swallow a cancellation that comes as the message arrives, and a cancelled
        pump would then go on answering frames beside its successor."""
        receiving = asyncio.ensure_future(self.ws.recv())
        # Mark its outcome seen: a recv() that fails as this one is cancelled is not "never retrieved".
        receiving.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            done, _ = await asyncio.wait({receiving}, timeout=timeout)
        finally:
            if not receiving.done():
                receiving.cancel()  # websockets keeps a message whose recv() is cancelled
        if not done:
            raise asyncio.TimeoutError
        return json.loads(receiving.result())

    async def recv_until(self, status: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["status"] not in ("send_frame", "wait"):
                self.messages.append(message)
            if message["status"] == status:
                return message

    async def send_frame(self, params: dict[str, Any], jpeg: bytes | None) -> None:
        await self.ws.send(json.dumps({"status": "next_frame"}))
        await self.ws.send(json.dumps(params))
        if jpeg is not None:
            await self.ws.send(jpeg)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def pump(self, params: dict[str, Any], frames: int | None = None, jpeg: bytes | None = None) -> None:
        """Answer every send_frame with params and a frame, like a camera page (forever by default, or
        until the server closes the socket: ConnectionClosed, once what it said before is read)."""
        sent = 0
        while frames is None or sent < frames:
            message = await self.recv(timeout=60)
            if message["status"] == "send_frame":
                try:
                    await self.send_frame(params, jpeg if jpeg is not None else camera_jpeg(sent))
                except websockets.ConnectionClosed:
                    continue  # the server has closed: the messages it sent before are still to be read
                sent += 1
            elif message["status"] != "wait":
                self.messages.append(message)


async def mjpeg_frames(
    server: RunningServer, user_id: str, http: httpx.AsyncClient, path: str = "stream"
) -> AsyncIterator[bytes]:
    """The JPEG parts of /api/stream/{user_id} (or /api/view/{token} with path="view"), parsed as any
    multipart reader would."""
    async with http.stream("GET", f"{server.http}/api/{path}/{user_id}") as response:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"] == "multipart/x-mixed-replace;boundary=frame"
        buffer = b""
        async for chunk in response.aiter_bytes():
            buffer += chunk
            while True:
                start = buffer.find(b"--frame\r\n")
                header_end = buffer.find(b"\r\n\r\n", start)
                if start < 0 or header_end < 0:
                    break
                headers = dict(
                    line.split(": ", 1) for line in buffer[start + 9 : header_end].decode().split("\r\n") if line
                )
                length = int(headers["Content-Length"])
                body_start = header_end + 4
                if len(buffer) < body_start + length:
                    break
                assert headers["Content-Type"] == "image/jpeg"
                yield buffer[body_start : body_start + length]
                buffer = buffer[body_start + length :]


async def take(frames: AsyncIterator[bytes], count: int, timeout: float = 60.0) -> list[bytes]:
    async def collect() -> list[bytes]:
        out = []
        async for frame in frames:
            out.append(frame)
            if len(out) == count:
                break
        return out

    return await asyncio.wait_for(collect(), timeout)


class LiveUser:
    """One user as the web page is one: its websocket answers every `send_frame` with `params` and a
    camera frame (`jpeg`, or a new camera-like frame each time), and its MJPEG stream shows the
    outputs. The stream opens with the first `frames()` call (which starts the frame requests).

        async with LiveUser(server, {"prompt": "a cat", "width": 256, "height": 256}) as user:
            frames = await user.frames(3)
    """

    def __init__(
        self, server: RunningServer, params: dict[str, Any], *, user_id: str | None = None, jpeg: bytes | None = None
    ) -> None:
        self.client = Client(server, user_id)
        self.params = params
        self.jpeg = jpeg
        self._server = server
        self._http: httpx.AsyncClient | None = None
        self._stream: AsyncIterator[bytes] | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def messages(self) -> list[dict[str, Any]]:
        """What the server said besides send_frame and wait (errors, say), in order."""
        return self.client.messages

    async def __aenter__(self) -> LiveUser:
        connected = await self.client.connect()
        assert connected["status"] == "connected", connected
        self._http = httpx.AsyncClient(timeout=60)
        self._stream = mjpeg_frames(self._server, self.user_id, self._http)
        self._pump = asyncio.create_task(self.client.pump(self.params, jpeg=self.jpeg))
        return self

    async def frames(self, count: int, timeout: float = 60.0) -> list[bytes]:
        """The next `count` frames of the stream."""
        assert self._stream is not None
        return await take(self._stream, count, timeout)

    async def __aexit__(self, *exc: object) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self._stream is not None:
            await self._stream.aclose()  # type: ignore[attr-defined]
        if self._http is not None:
            await self._http.aclose()
        await self.client.close()
