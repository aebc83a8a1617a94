"""Test helpers: start the real server in a subprocess on a loopback port, and talk to it the way
the anchor's clients do (websocket ping-pong plus an MJPEG stream read over HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class RunningServer:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

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
        return httpx.get(f"{self.http}/api/health", timeout=5).json()

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
    """The real server (`python server/main.py ...`) on a free loopback port, stopped with Ctrl-C."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER_MAIN), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or server_env(),
        cwd=REPO_ROOT / "tests",  # anywhere but the repo root: the server must not care
    )
    server = RunningServer(proc, port)
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            if proc.poll() is not None:
                server._reader.join(2)
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.log[-4000:]}")
            if any("Open http" in line for line in server.lines):
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


def camera_jpeg(seed: int = 0, width: int = 320, height: int = 240, quality: int = 85) -> bytes:
    """A camera-like frame: smooth gradients plus noise, different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, (seed * 37) % 255)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return simplejpeg.encode_jpeg(pixels, quality=quality)


def jpeg_size(data: bytes) -> tuple[int, int]:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return width, height


class Client:
    """A protocol client: one user's websocket, answering send_frame like the anchor's page does."""

    def __init__(self, server: RunningServer, user_id: str | None = None) -> None:
        self.server = server
        self.user_id = user_id or str(uuid.uuid4())
        self.ws: Any = None
        self.messages: list[dict[str, Any]] = []  # everything but send_frame/wait, in order

    async def connect(self) -> dict[str, Any]:
        self.ws = await websockets.connect(f"{self.server.ws}/api/ws/{self.user_id}", max_size=None)
        return await self.recv()

    async def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

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
        """Answer every send_frame with params and a frame, like a camera page (forever by default)."""
        sent = 0
        while frames is None or sent < frames:
            message = await self.recv(timeout=60)
            if message["status"] == "send_frame":
                await self.send_frame(params, jpeg if jpeg is not None else camera_jpeg(sent))
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
