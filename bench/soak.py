"""Soak benchmark: does the server stay the same over a long run and over many sessions? The real server
(`python server/main.py --pipeline bench.echo_pipeline`) and real protocol clients, two phases:

    .venv/bin/python bench/soak.py --json docs/bench/soak.json     # about 11 min: 10 min of load, 1000 sessions
    .venv/bin/python bench/soak.py --duration 120 --window 30      # about 2 min 40 s
    .venv/bin/python bench/soak.py --quick                         # about 20 s (tests/test_soak.py)

1. Steady load. `--users` users (8) stream at once for `--duration` seconds (600), each with its
   websocket (answering every `send_frame` like the page) and its MJPEG stream, against the echo
   model (returns its input after `--delay-ms`). The server process is sampled every
   `--sample-interval` seconds (psutil on its pid: resident memory, open file descriptors, threads,
   CPU time), and the frames' latency (just before the frame's messages are sent -> its MJPEG part
   received) and fps are measured. Two windows of `--window` seconds (60) are compared: the first
   after `--warmup` seconds (10), and the last. Every frame carries a stamp in its top-left corner
   (bench/serving_path.py's block code): the user's marker and the frame's number, so each MJPEG
   part is checked: it must be this user's, and one of the frames it sent last.
2. Churn. `--cycles` sessions (1000), one after the other: connect the websocket, open the stream,
   receive a frame, then close, in turn: the stream then the socket ("stream-first"), the socket
   (close frame) then wait for the server to end the stream ("socket-first"), the socket's TCP
   connection without a close frame, the stream left open ("abort"), and both connections reset
   at once, as when the browser's process dies ("crash"). After each, GET /api/health is polled
   until `users` is 0 (deadline `--gone-timeout`). The server's sessions, fds and threads are
   taken before the churn (after `--churn-warmup` cycles not counted, and once they are stable)
   and after it (polled until back, deadline `--settle-timeout`).

Goals (the run exits 1 when one is missed):

- memory: the median RSS of the last window at most 5 % over that of the first (not judged with
  --quick: 10 s say nothing about a leak);
- fds: the most in the last window no more than in the first; after the churn, back to before;
- threads: the same. One allowance, in the steady phase only: the asyncio default executor (the
  server's only thread pool made on demand: `asyncio.to_thread`) starts its threads when work
  comes and keeps them, up to min(32, cores + 4) and never more than the concurrent users; the
  threads may grow up to the idle server's count plus that bound. None after the churn: one user at
  a time needs one pool thread, which the warm-up cycles start;
- frames: no user receives a frame that is not its own (another user's marker, a stamp that does
  not read, a frame it did not send last), and every user still receives frames in the last window;
- sessions: `users` back to 0 after each churn cycle and after the run; no failed cycle;
- no error messages to the clients, and no ERROR line or traceback in the server's log.

Everything is printed with the machine, the versions and the settings; `--json OUT` writes it all.
`--url` and `--pid` use a server already running (with `--pipeline bench.echo_pipeline`, no users).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import socket
import struct
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/soak.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import simplejpeg  # noqa: E402
import websockets  # noqa: E402

from bench import report  # noqa: E402
from bench.live import NUMBER_BITS, Client, RunningServer, camera_pixels, mjpeg_frames, read_stamp, run_server, stamp  # noqa: E402
from bench.serving_path import CAMERA_NOISE, gpu_name  # noqa: E402

PIPELINE = "bench.echo_pipeline"
JPEG_QUALITY = 90

# The stamp's 20 bits: the user's marker (high 8) and the frame's number modulo FRAMES (low 12).
SEQ_BITS = 12
MARKERS = 1 << (NUMBER_BITS - SEQ_BITS)  # 256: steady users take 0..127, churn sessions 128..255
CHURN_MARKER0 = MARKERS // 2
FRAMES_PER_USER = 64  # distinct frames a steady user cycles through (encoded once, before the run)
FRAMES_PER_SESSION = 2  # the same for a churn session

MEMORY_TOLERANCE = 0.05  # RSS of the last window at most 5 % over the first
CLOSE_MODES = ("stream-first", "socket-first", "abort", "crash")
FRAME_TIMEOUT_S = 30.0  # a churn session's first frame, or the server ending its stream
GIVE_UP_AFTER = 20  # churn cycles failing in a row: the server is gone, stop
DEFAULT_MAX_USERS = 8  # the server's --max-users default: more users need --max-users
LOG_PROBLEM = re.compile(r"^\S+ (ERROR|CRITICAL)\b|Traceback \(most recent call last\)")
LOG_WARNING = re.compile(r"^\S+ WARNING\b")


# --- the server and its process ------------------------------------------------------------------


@dataclass
class Target:
    """The server under test: what Client and mjpeg_frames need (http, ws), its pid, and its log when
    this script started it."""

    http: str
    ws: str
    pid: int
    running: RunningServer | None = None

    def log_lines(self) -> list[str]:
        return list(self.running.lines) if self.running else []


class Probe:
    """The server process as psutil sees it."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def sample(self) -> dict[str, float]:
        with self.process.oneshot():
            times = self.process.cpu_times()
            return {
                "t": time.perf_counter(),
                "rss_mib": self.process.memory_info().rss / 2**20,
                "fds": self.process.num_fds(),
                "threads": self.process.num_threads(),
                "cpu_s": times.user + times.system,
            }


def pool_bound(users: int) -> int:
    """Most threads the asyncio default executor can hold when `users` sessions each wait on at most one
    `asyncio.to_thread` call at a time (ThreadPoolExecutor's default max_workers on Python 3.8-3.12)."""
    return min(users, min(32, (os.cpu_count() or 1) + 4))


async def health(http: httpx.AsyncClient, target: Target) -> dict[str, Any]:
    response = await http.get(f"{target.http}/api/health", timeout=10)
    response.raise_for_status()
    return response.json()


async def wait_users(http: httpx.AsyncClient, target: Target, count: int, timeout: float) -> float | None:
    """Poll /api/health until `users` is `count`: the seconds it took, or None past the deadline."""
    started = time.perf_counter()
    while True:
        if (await health(http, target))["users"] == count:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            return None
        await asyncio.sleep(0.01)


# --- frames --------------------------------------------------------------------------------------


class FrameBank:
    """Camera-like JPEGs stamped with a marker and a frame number, encoded once and reused: the clients
    spend their CPU on the protocol, not on encoding (the server cannot tell)."""

    def __init__(self, size: int, per_marker: int) -> None:
        self.size = size
        self.per_marker = per_marker
        self._backgrounds: dict[int, Any] = {}
        self._jpegs: dict[tuple[int, int], bytes] = {}

    def jpeg(self, marker: int, seq: int) -> bytes:
        key = (marker, seq % self.per_marker)
        if key not in self._jpegs:
            if marker not in self._backgrounds:
                # A different picture per marker.
                self._backgrounds[marker] = camera_pixels(marker, self.size, self.size, noise=CAMERA_NOISE)
            pixels = self._backgrounds[marker].copy()
            stamp(pixels, marker << SEQ_BITS | key[1])
            self._jpegs[key] = simplejpeg.encode_jpeg(pixels, quality=JPEG_QUALITY, colorspace="RGB")
        return self._jpegs[key]


def read_marker(jpeg: bytes) -> tuple[int, int] | None:
    """(marker, frame number modulo the bank's size) of an output frame, or None when it does not read."""
    number = read_stamp(jpeg)
    return None if number is None else (number >> SEQ_BITS, number & ((1 << SEQ_BITS) - 1))


# --- phase 1: steady load ------------------------------------------------------------------------


class SoakUser:
    """One user for the whole run: bench/live.py's Client answering send_frame, and its MJPEG stream."""

    def __init__(self, target: Target, http: httpx.AsyncClient, bank: FrameBank, marker: int,
                 params: dict[str, Any]) -> None:
        self.target = target
        self.http = http
        self.bank = bank
        self.marker = marker
        self.params = params
        self.client = Client(target)
        self.sent: list[float] = []  # frame number -> when it was sent
        self.received: dict[int, float] = {}  # frame number -> when its output arrived
        self.outputs: list[float] = []  # arrival time of every MJPEG part
        self.foreign = 0  # parts stamped with another user's marker
        self.foreign_markers: set[int] = set()
        self.unreadable = 0  # parts without a readable stamp
        self.unknown = 0  # own marker, but not one of the frames sent last
        self.duplicates = 0  # the same frame twice
        self.errors: list[str] = []
        self.sending = True
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        first = await self.client.connect()
        if first.get("status") != "connected":
            raise RuntimeError(f"user {self.marker} could not connect: {first}")
        self._tasks = [asyncio.create_task(self._answer()), asyncio.create_task(self._watch())]

    async def stop(self, grace: float) -> None:
        """Stop sending, give the last frame `grace` seconds to come back, close the websocket (the
        server ends the stream), and wait for both tasks."""
        self.sending = False
        deadline = time.perf_counter() + grace
        while self.sent and len(self.sent) - 1 not in self.received and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        await self.client.close()
        _, pending = await asyncio.wait(self._tasks, timeout=FRAME_TIMEOUT_S)
        for task in pending:
            self.errors.append(f"user {self.marker}: its stream did not end after the websocket closed")
            task.cancel()

    async def _answer(self) -> None:
        try:
            while True:
                try:
                    message = await self.client.recv(timeout=60)
                except asyncio.TimeoutError:
                    self.errors.append("no message from the server for 60 s")
                    continue
                status = message.get("status")
                if status == "send_frame" and self.sending:
                    seq = len(self.sent)
                    self.sent.append(time.perf_counter())
                    await self.client.send_frame(self.params, self.bank.jpeg(self.marker, seq))
                elif status in ("error", "timeout"):
                    self.errors.append(f"{status}: {message.get('message')}")
        except websockets.ConnectionClosed:
            pass

    async def _watch(self) -> None:
        try:
            async for jpeg in mjpeg_frames(self.target, self.client.user_id, self.http):
                self._check(jpeg, time.perf_counter())
        except (httpx.HTTPError, AssertionError):
            pass  # the session ended

    def _check(self, jpeg: bytes, arrived: float) -> None:
        self.outputs.append(arrived)
        stamped = read_marker(jpeg)
        if stamped is None:
            self.unreadable += 1
            return
        marker, residue = stamped
        if marker != self.marker:
            self.foreign += 1
            self.foreign_markers.add(marker)
            return
        # Ping-pong: one frame in flight, and send_frame may overtake the output on the other
        # connection: the part is one of the last frames sent, the newest with this residue.
        last = len(self.sent) - 1
        seq = next((s for s in range(last, max(-1, last - self.bank.per_marker), -1)
                    if s % self.bank.per_marker == residue), None)
        if seq is None:
            self.unknown += 1
        elif seq in self.received:
            self.duplicates += 1
        else:
            self.received[seq] = arrived


def _ms(values: list[float]) -> list[float]:
    return [v * 1000.0 for v in values]


def window_figures(users: list[SoakUser], samples: list[dict[str, float]], start: float, end: float,
                   origin: float) -> dict[str, Any]:
    """The figures of [start, end) (perf_counter times); `origin` is the start of the load."""
    latencies = [
        user.received[seq] - sent for user in users for seq, sent in enumerate(user.sent)
        if start <= sent < end and seq in user.received
    ]
    sent = sum(1 for user in users for t in user.sent if start <= t < end)
    per_user = [sum(1 for t in user.outputs if start <= t < end) for user in users]
    inside = [s for s in samples if start <= s["t"] <= end]
    length = end - start

    def column(key: str) -> list[float]:
        return [s[key] for s in inside]

    cpu_share = None
    if len(inside) >= 2 and inside[-1]["t"] > inside[0]["t"]:
        cpu_share = (inside[-1]["cpu_s"] - inside[0]["cpu_s"]) / (inside[-1]["t"] - inside[0]["t"])
    return {
        "from_s": start - origin,
        "length_s": length,
        "samples": len(inside),
        "rss_mib": report.stats(column("rss_mib")),
        "fds": {"min": min(column("fds"), default=None), "max": max(column("fds"), default=None)},
        "threads": {"min": min(column("threads"), default=None), "max": max(column("threads"), default=None)},
        "server_cpu_share": cpu_share,
        "outputs": sum(per_user),
        "fps_total": sum(per_user) / length if length > 0 else 0.0,
        "fps_per_user_min": min(per_user) / length if per_user and length > 0 else 0.0,
        "outputs_per_user": per_user,
        "sent": sent,
        "seen": len(latencies),
        "latency_ms": report.stats(_ms(latencies)),
    }


async def sample_every(probe: Probe, interval: float, samples: list[dict[str, float]]) -> None:
    while True:
        try:
            samples.append(probe.sample())
        except psutil.Error:
            return  # the server has gone: what follows says so
        await asyncio.sleep(interval)


async def run_steady(target: Target, probe: Probe, args: argparse.Namespace, idle: dict[str, float]) -> dict[str, Any]:
    params = {"delay_ms": args.delay_ms, "width": args.size, "height": args.size}
    bank = FrameBank(args.size, FRAMES_PER_USER)
    for marker in range(args.users):  # encode every frame now, not while measuring
        for seq in range(FRAMES_PER_USER):
            bank.jpeg(marker, seq)
    limits = httpx.Limits(max_connections=args.users + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), limits=limits) as http:
        users = [SoakUser(target, http, bank, marker, params) for marker in range(args.users)]
        await asyncio.gather(*(user.start() for user in users))
        started = time.perf_counter()
        samples: list[dict[str, float]] = []
        sampler = asyncio.create_task(sample_every(probe, args.sample_interval, samples))
        every = max(10.0, args.duration / 10)
        next_report = started + every
        end = started + args.duration
        while (now := time.perf_counter()) < end:
            await asyncio.sleep(min(end, next_report) - now)
            if time.perf_counter() >= next_report and time.perf_counter() < end:
                recent = sum(1 for user in users for t in user.outputs if t >= next_report - every)
                last = samples[-1] if samples else {}
                report.progress(f"  {time.perf_counter() - started:5.0f} s: {recent / every:.1f} fps, "
                                f"RSS {last.get('rss_mib', 0):.1f} MiB, {last.get('fds')} fds, "
                                f"{last.get('threads')} threads")
                next_report += every
        ended = time.perf_counter()
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        users_during = (await health(http, target))["users"]
        await asyncio.gather(*(user.stop(grace=2.0 + 2 * args.delay_ms / 1000.0) for user in users))

    first = window_figures(users, samples, started + args.warmup, started + args.warmup + args.window, started)
    last = window_figures(users, samples, ended - args.window, ended, started)
    return {
        "duration_s": ended - started,
        "users": args.users,
        "users_during": users_during,
        "first": first,
        "last": last,
        "whole": window_figures(users, samples, started, ended, started),
        "frames_checked": sum(len(user.outputs) for user in users),
        "frames_sent": sum(len(user.sent) for user in users),
        "foreign": sum(user.foreign for user in users),
        "foreign_markers": sorted({m for user in users for m in user.foreign_markers}),
        "unreadable": sum(user.unreadable for user in users),
        "unknown": sum(user.unknown for user in users),
        "duplicates": sum(user.duplicates for user in users),
        "errors": [e for user in users for e in user.errors],
        "thread_allowance": {"idle_threads": idle["threads"], "pool_bound": pool_bound(args.users),
                             "limit": max(first["threads"]["max"] or 0, idle["threads"] + pool_bound(args.users))},
        "samples": [{k: round(v, 3) for k, v in s.items()} | {"t": round(s["t"] - started, 3)} for s in samples],
    }


# --- phase 2: churn ------------------------------------------------------------------------------


def reset_on_close(sock: Any) -> None:
    """Make close() send a TCP reset, with no FIN and no websocket close frame: a process that died."""
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def answer_frames(client: Client, bank: FrameBank, marker: int, params: dict[str, Any], errors: list[str]) -> None:
    seq = 0
    try:
        while True:
            message = await client.recv(timeout=FRAME_TIMEOUT_S)
            if message.get("status") == "send_frame":
                await client.send_frame(params, bank.jpeg(marker, seq))
                seq += 1
            elif message.get("status") in ("error", "timeout"):
                errors.append(f"{message.get('status')}: {message.get('message')}")
    except (websockets.ConnectionClosed, asyncio.TimeoutError):
        pass


async def stream_ends(frames: Any) -> bool:
    """Read the stream until the server ends it; False when it has not ended within the deadline."""
    async def drain() -> None:
        try:
            async for _ in frames:
                pass
        except httpx.HTTPError:
            pass  # ended by a closed connection: ended all the same

    try:
        await asyncio.wait_for(drain(), FRAME_TIMEOUT_S)
        return True
    except asyncio.TimeoutError:
        return False


class Churn:
    def __init__(self, target: Target, probe: Probe, args: argparse.Namespace) -> None:
        self.target = target
        self.probe = probe
        self.args = args
        self.bank = FrameBank(args.size, FRAMES_PER_SESSION)
        self.params = {"delay_ms": args.delay_ms, "width": args.size, "height": args.size}
        self.stream_sockets: dict[str, Any] = {}  # user id -> the stream connection's socket
        self.errors: list[str] = []

    async def _remember_socket(self, response: httpx.Response) -> None:
        path = response.request.url.path
        if path.startswith("/api/stream/"):
            stream = response.extensions.get("network_stream")
            self.stream_sockets[path.rsplit("/", 1)[1]] = stream.get_extra_info("socket") if stream else None

    async def cycle(self, number: int, mode: str, streams: httpx.AsyncClient, checks: httpx.AsyncClient) -> dict[str, Any]:
        """One session: connect, stream, one frame, close the `mode` way, wait until the server has let
        it go. Returns the cycle's figures and its problem, if any."""
        marker = CHURN_MARKER0 + number % (MARKERS - CHURN_MARKER0)  # the previous session's differs
        client = Client(self.target)
        problem = None
        started = time.perf_counter()
        try:
            first = await client.connect()
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as error:
            return {"mode": mode, "problem": f"could not connect: {type(error).__name__}: {error}", "gone_s": None}
        if first.get("status") != "connected":
            await client.close()
            return {"mode": mode, "problem": f"not connected: {first}", "gone_s": None}
        answer = asyncio.create_task(answer_frames(client, self.bank, marker, self.params, self.errors))
        frames = mjpeg_frames(self.target, client.user_id, streams)
        try:
            try:
                jpeg = await asyncio.wait_for(anext(frames), FRAME_TIMEOUT_S)
            except (asyncio.TimeoutError, StopAsyncIteration, httpx.HTTPError, AssertionError) as error:
                problem = f"no frame on the stream ({type(error).__name__})"
            else:
                stamped = read_marker(jpeg)
                if stamped is None or stamped[0] != marker:
                    problem = f"got a frame stamped {stamped}, not this session's marker {marker}"
            if problem is None:
                if mode == "stream-first":
                    await frames.aclose()
                    await client.close()
                elif mode == "socket-first":
                    await client.close()
                    if not await stream_ends(frames):
                        problem = "the stream did not end after the websocket closed"
                elif mode == "abort":
                    client.ws.transport.abort()
                    if not await stream_ends(frames):
                        problem = "the stream did not end after the websocket's connection dropped"
                else:  # crash
                    sockets = [client.ws.transport.get_extra_info("socket"), self.stream_sockets.get(client.user_id)]
                    if None in sockets:
                        problem = "could not reach a socket to reset (websockets or httpx changed?)"
                    for sock in sockets:
                        reset_on_close(sock)
                    client.ws.transport.abort()
                    await frames.aclose()
        finally:
            await frames.aclose()
            if client.ws is not None and problem is not None:
                client.ws.transport.abort()
            answer.cancel()
            await asyncio.gather(answer, return_exceptions=True)
            self.stream_sockets.pop(client.user_id, None)
        closed = time.perf_counter()
        gone = await wait_users(checks, self.target, 0, self.args.gone_timeout)
        if gone is None and problem is None:
            problem = f"the server still had the session {self.args.gone_timeout:g} s after it was closed"
        return {"mode": mode, "problem": problem, "gone_s": gone, "cycle_s": closed - started}

    async def safe_cycle(self, number: int, streams: httpx.AsyncClient, checks: httpx.AsyncClient) -> dict[str, Any]:
        mode = CLOSE_MODES[number % len(CLOSE_MODES)]
        try:
            return await self.cycle(number, mode, streams, checks)
        except Exception as error:  # the server went away, say: a failed cycle, not a crashed benchmark
            return {"mode": mode, "problem": f"{type(error).__name__}: {error}", "gone_s": None}

    async def snapshot(self, checks: httpx.AsyncClient) -> dict[str, Any]:
        """Sessions, fds, threads, memory: right after a health request, on the same kept-alive connection
        each time, so that connection is counted the same way every time."""
        users = (await health(checks, self.target))["users"]
        return {"users": users, **self.probe.sample()}

    async def settle(self, checks: httpx.AsyncClient,
                     done: Callable[[list[dict[str, Any]]], bool]) -> tuple[dict[str, Any], float | None]:
        """Poll until `done(snapshots so far)`; the last snapshot and the seconds it took (None: deadline)."""
        started = time.perf_counter()
        history: list[dict[str, Any]] = []
        while True:
            history.append(await self.snapshot(checks))
            if done(history):
                return history[-1], time.perf_counter() - started
            if time.perf_counter() - started > self.args.settle_timeout:
                return history[-1], None
            await asyncio.sleep(0.1)

    async def run(self) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=0)  # a stream's connection ends with it
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), limits=limits,
                                     event_hooks={"response": [self._remember_socket]}) as streams, \
                httpx.AsyncClient(timeout=10) as checks:  # kept alive: one connection for every health check
            warmup = [await self.safe_cycle(i, streams, checks) for i in range(self.args.churn_warmup)]

            def stable(history: list[dict[str, Any]]) -> bool:  # no users, and 2 s of the same fds and threads
                recent = history[-20:]
                return (len(recent) == 20 and all(s["users"] == 0 for s in recent)
                        and len({(s["fds"], s["threads"]) for s in recent}) == 1)

            before, before_s = await self.settle(checks, stable)
            samples: list[dict[str, float]] = []
            sampler = asyncio.create_task(sample_every(self.probe, 0.25, samples))
            started = time.perf_counter()
            cycles = []
            every = max(1, self.args.cycles // 10)
            for i in range(self.args.cycles):
                cycles.append(await self.safe_cycle(i, streams, checks))
                if len(cycles) >= GIVE_UP_AFTER and all(c["problem"] for c in cycles[-GIVE_UP_AFTER:]):
                    report.progress(f"  {GIVE_UP_AFTER} cycles in a row failed: the churn stops here")
                    break
                if (i + 1) % every == 0 and i + 1 < self.args.cycles:
                    last = samples[-1] if samples else {}
                    report.progress(f"  {i + 1} cycles, {time.perf_counter() - started:.0f} s: "
                                    f"{last.get('fds')} fds, {last.get('threads')} threads")
            elapsed = time.perf_counter() - started
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)

            def back(history: list[dict[str, Any]]) -> bool:
                s = history[-1]
                return s["users"] == before["users"] and s["fds"] <= before["fds"] and s["threads"] <= before["threads"]

            after, after_s = await self.settle(checks, back)
        by_mode = {}
        for mode in CLOSE_MODES:
            mine = [c for c in cycles if c["mode"] == mode]
            by_mode[mode] = {
                "cycles": len(mine),
                "failed": sum(1 for c in mine if c["problem"]),
                "gone_ms": report.stats(_ms([c["gone_s"] for c in mine if c["gone_s"] is not None])),
            }
        peak = {key: max((s[key] for s in samples), default=None) for key in ("fds", "threads", "rss_mib")}
        return {
            "cycles": len(cycles),
            "elapsed_s": elapsed,
            "cycles_per_s": len(cycles) / elapsed if elapsed else None,
            "warmup_cycles": len(warmup),
            "warmup_problems": [c["problem"] for c in warmup if c["problem"]],
            "before": before,
            "before_stable_after_s": before_s,
            "after": after,
            "settled_after_s": after_s,
            "peak": peak,
            "by_mode": by_mode,
            "failed": sum(1 for c in cycles if c["problem"]),
            "problems": [f"cycle {i} ({c['mode']}): {c['problem']}" for i, c in enumerate(cycles) if c["problem"]][:20],
            "errors": self.errors[:20],
            "error_count": len(self.errors),
        }


# --- judging and printing ------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(a: float | None, b: float | None, digits: int = 0) -> str:
    if a is None or b is None:
        return "-"
    return f"{b - a:+.{digits}f}"


def _pct(a: float | None, b: float | None) -> str:
    if not a or b is None:
        return "-"
    return f"{(b - a) / a * 100:+.1f} %"


def goals(steady: dict[str, Any] | None, churn: dict[str, Any] | None, log: dict[str, Any],
          quick: bool) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool, judged: bool = True) -> None:
        checks.append({"goal": goal, "measured": measured, "met": bool(met), "judged": judged})

    if steady:
        first, last = steady["first"], steady["last"]
        a, b = first["rss_mib"]["median"], last["rss_mib"]["median"]
        add(f"steady: memory (median RSS) of the last window at most {MEMORY_TOLERANCE * 100:g} % over the first",
            f"{_f(a)} -> {_f(b)} MiB ({_pct(a, b)})",
            a is not None and b is not None and b <= a * (1 + MEMORY_TOLERANCE), judged=not quick)
        a, b = first["fds"]["max"], last["fds"]["max"]
        add("steady: open fds not growing (most in the last window <= first)", f"{a} -> {b}",
            a is not None and b is not None and b <= a)
        a, b, limit = first["threads"]["max"], last["threads"]["max"], steady["thread_allowance"]["limit"]
        add(f"steady: threads not growing (last <= first, or within the default executor's bound: <= {limit})",
            f"{a} -> {b}", a is not None and b is not None and (b <= a or b <= limit))
        bad = steady["foreign"] + steady["unreadable"] + steady["unknown"]
        add("steady: each user receives only its own frames",
            f"{steady['frames_checked']} checked, {steady['foreign']} another user's, {steady['unreadable']} unreadable, "
            f"{steady['unknown']} not sent last", bad == 0 and steady["frames_checked"] > 0)
        add("steady: every user still receives frames in the last window",
            f"fewest {min(last['outputs_per_user'], default=0)} outputs", min(last["outputs_per_user"], default=0) > 0)
        add("steady: all users connected throughout, none left after",
            f"{steady['users_during']} of {steady['users']} during, {steady['users_after']} after",
            steady["users_during"] == steady["users"] and steady["users_after"] == 0)
        add("steady: no error messages to the clients", str(len(steady["errors"])), not steady["errors"])
    if churn:
        before, after = churn["before"], churn["after"]
        add("churn: every cycle connects, gets its frame, closes, and the server lets the user go",
            f"{churn['failed']} of {churn['cycles']} failed", churn["failed"] == 0 and churn["cycles"] > 0)
        add("churn: sessions back to where they started", f"{before['users']} -> {after['users']}",
            after["users"] == before["users"])
        add("churn: open fds back to where they started", f"{before['fds']} -> {after['fds']}",
            after["fds"] <= before["fds"])
        add("churn: threads back to where they started", f"{before['threads']} -> {after['threads']}",
            after["threads"] <= before["threads"])
        add("churn: no error messages to the clients", str(churn["error_count"]), churn["error_count"] == 0)
    if log["available"]:
        add("server log: no ERROR line or traceback", str(len(log["problems"])), not log["problems"])
    for check in checks:
        if not check["judged"]:
            check["verdict"] = f"not judged (--quick){': would be met' if check['met'] else ': would be missed'}"
        else:
            check["verdict"] = "met" if check["met"] else "MISSED"
    return checks


def steady_table(steady: dict[str, Any]) -> str:
    first, last = steady["first"], steady["last"]
    rows = [
        ["server memory, RSS MiB (median)", _f(first["rss_mib"]["median"]), _f(last["rss_mib"]["median"]),
         _pct(first["rss_mib"]["median"], last["rss_mib"]["median"])],
        ["server memory, RSS MiB (max)", _f(first["rss_mib"]["max"]), _f(last["rss_mib"]["max"]),
         _pct(first["rss_mib"]["max"], last["rss_mib"]["max"])],
        ["server open fds (min-max)", f"{first['fds']['min']}-{first['fds']['max']}",
         f"{last['fds']['min']}-{last['fds']['max']}", _delta(first["fds"]["max"], last["fds"]["max"])],
        ["server threads (min-max)", f"{first['threads']['min']}-{first['threads']['max']}",
         f"{last['threads']['min']}-{last['threads']['max']}", _delta(first["threads"]["max"], last["threads"]["max"])],
        ["server CPU, % of a core", _f(_mul(first["server_cpu_share"], 100)), _f(_mul(last["server_cpu_share"], 100)),
         _delta(_mul(first["server_cpu_share"], 100), _mul(last["server_cpu_share"], 100), 1)],
        ["fps, all users", _f(first["fps_total"]), _f(last["fps_total"]), _pct(first["fps_total"], last["fps_total"])],
        ["fps, slowest user", _f(first["fps_per_user_min"]), _f(last["fps_per_user_min"]),
         _pct(first["fps_per_user_min"], last["fps_per_user_min"])],
        ["latency p50 ms", _f(first["latency_ms"]["p50"]), _f(last["latency_ms"]["p50"]),
         _pct(first["latency_ms"]["p50"], last["latency_ms"]["p50"])],
        ["latency p95 ms", _f(first["latency_ms"]["p95"]), _f(last["latency_ms"]["p95"]),
         _pct(first["latency_ms"]["p95"], last["latency_ms"]["p95"])],
        ["frames sent / seen", f"{first['sent']} / {first['seen']}", f"{last['sent']} / {last['seen']}", ""],
    ]
    headers = ["figure", f"first {first['length_s']:g} s (from {first['from_s']:.0f} s)",
               f"last {last['length_s']:g} s (from {last['from_s']:.0f} s)", "change"]
    note = (f"{steady['frames_checked']} output frames checked over {steady['duration_s']:.0f} s: "
            f"{steady['foreign']} from another user, {steady['unreadable']} unreadable, {steady['unknown']} not among "
            f"the frames sent last, {steady['duplicates']} repeated; {steady['frames_sent']} frames sent; "
            f"{len(steady['errors'])} error messages. Latency: frame sent to its output read from the MJPEG stream, "
            f"over the frames sent in the window. Threads: idle server {steady['thread_allowance']['idle_threads']}, "
            f"default executor bound {steady['thread_allowance']['pool_bound']}.")
    return report.table(headers, rows, "lrrr") + "\n\n" + note


def _mul(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def churn_tables(churn: dict[str, Any]) -> str:
    before, after, peak = churn["before"], churn["after"], churn["peak"]
    rows = [
        ["sessions (health users)", before["users"], after["users"], _delta(before["users"], after["users"]), "-"],
        ["server open fds", before["fds"], after["fds"], _delta(before["fds"], after["fds"]), peak["fds"]],
        ["server threads", before["threads"], after["threads"], _delta(before["threads"], after["threads"]),
         peak["threads"]],
        ["server memory, RSS MiB", _f(before["rss_mib"]), _f(after["rss_mib"]), _pct(before["rss_mib"], after["rss_mib"]),
         _f(peak["rss_mib"])],
    ]
    settled = churn["settled_after_s"]
    first = report.table(["figure", "before", "after", "change", "peak during"], rows, "lrrrr")
    note = (f"{churn['cycles']} cycles in {churn['elapsed_s']:.0f} s ({_f(churn['cycles_per_s'])} a second), after "
            f"{churn['warmup_cycles']} warm-up cycles; 'after' "
            + (f"reached {settled:.1f} s after the last cycle" if settled is not None else
               "NOT reached within the settle deadline: the values when it passed")
            + "; fds and threads taken right after a health check on one kept-alive connection.")
    mode_rows = [
        [mode, m["cycles"], m["failed"], _f(m["gone_ms"]["p50"]), _f(m["gone_ms"]["p95"]), _f(m["gone_ms"]["max"])]
        for mode, m in churn["by_mode"].items()
    ]
    second = report.table(["close", "cycles", "failed", "user gone p50 ms", "p95 ms", "max ms"], mode_rows, "lrrrrr")
    explain = ("stream-first: stream closed, then the websocket (close frame); socket-first: websocket closed, the "
               "server ends the stream; abort: the websocket's TCP connection closed without a close frame, stream "
               "left open; crash: both connections reset. User gone: from the client's last close to /api/health "
               "showing no users (polled every 10 ms).")
    return first + "\n\n" + note + "\n\n" + second + "\n\n" + explain


def goals_table(checks: list[dict[str, Any]]) -> str:
    return report.table(["goal", "measured", "verdict"], [[c["goal"], c["measured"], c["verdict"]] for c in checks], "lll")


def scan_log(lines: list[str], available: bool) -> dict[str, Any]:
    problems = [line for line in lines if LOG_PROBLEM.search(line)]
    warnings = [line for line in lines if LOG_WARNING.search(line)]
    return {
        "available": available,
        "lines": len(lines),
        "problems": problems[:50],
        "warnings": warnings[:50],
        "warning_count": len(warnings),
        "connected": sum(1 for line in lines if ": connected (" in line),
        "closed": sum(1 for line in lines if ": closed after " in line),
    }


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak benchmark: the real server with the echo model under steady load (memory, fds, threads, "
                    "latency, fps at the start and the end; each user must get only its own frames), then many "
                    "sessions opened and closed in every order (sessions, fds, threads back to where they started). "
                    "Exits 1 when a goal is missed.")
    steady = parser.add_argument_group("steady load")
    steady.add_argument("--users", type=int, default=None,
                        help="users streaming at once; default 8 (--quick: 4); 0 skips the phase")
    steady.add_argument("--duration", type=float, default=None, help="seconds of steady load; default 600 (--quick: 10)")
    steady.add_argument("--warmup", type=float, default=None,
                        help="seconds before the first window; default 10 (--quick: 2)")
    steady.add_argument("--window", type=float, default=None,
                        help="seconds of the first and the last window, compared; default 60 (--quick: 3)")
    steady.add_argument("--sample-interval", type=float, default=None,
                        help="seconds between samples of the server process; default 1 (--quick: 0.2)")
    churn = parser.add_argument_group("churn")
    churn.add_argument("--cycles", type=int, default=None,
                       help="sessions opened and closed one after the other; default 1000 (--quick: 50); 0 skips the phase")
    churn.add_argument("--churn-warmup", type=int, default=4,
                       help="cycles before the 'before' figures, not counted; default 4")
    churn.add_argument("--gone-timeout", type=float, default=10.0,
                       help="seconds the server has to drop a closed session from /api/health; default 10")
    churn.add_argument("--settle-timeout", type=float, default=30.0,
                       help="seconds the server has to come back to its 'before' fds and threads; default 30")
    both = parser.add_argument_group("both")
    both.add_argument("--delay-ms", type=float, default=0.0, help="the echo model's time per frame, ms; default 0")
    both.add_argument("--size", type=int, default=None, help="frame width and height; default 512 (--quick: 256)")
    both.add_argument("--server-args", default="", metavar="ARGS",
                      help="extra options for the server this script starts, one string, e.g. --server-args='--max-batch 4' "
                           "(--max-users is added when --users is over 8 and it is not given)")
    both.add_argument("--url", help="use the server running at this URL (http://127.0.0.1:7860) instead of starting one; "
                                    "it must run --pipeline bench.echo_pipeline and have no users; needs --pid")
    both.add_argument("--pid", type=int, help="with --url: that server's process id (sampled with psutil)")
    both.add_argument("--quick", action="store_true", help="a short run (about 20 s): 4 users for 10 s, 50 cycles, 256x256")
    both.add_argument("--json", metavar="OUT", help="also write every figure as JSON to OUT")
    both.add_argument("--server-log", metavar="OUT", help="write the log of the server this script started to OUT")
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: Any, normal: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else normal)

    args.users = pick(args.users, 8, 4)
    args.duration = pick(args.duration, 600.0, 10.0)
    args.warmup = pick(args.warmup, 10.0, 2.0)
    args.window = pick(args.window, 60.0, 3.0)
    args.sample_interval = pick(args.sample_interval, 1.0, 0.2)
    args.cycles = pick(args.cycles, 1000, 50)
    args.size = pick(args.size, 512, 256)
    if not 0 <= args.users <= CHURN_MARKER0:
        parser.error(f"--users: 0 to {CHURN_MARKER0}")
    if args.cycles < 0 or args.churn_warmup < 0:
        parser.error("--cycles and --churn-warmup: 0 or more")
    if args.users and (args.window <= 0 or args.warmup < 0 or args.warmup + 2 * args.window > args.duration):
        parser.error("--warmup plus twice --window must fit in --duration")
    if args.sample_interval <= 0 or args.gone_timeout <= 0 or args.settle_timeout <= 0 or args.delay_ms < 0:
        parser.error("--sample-interval, --gone-timeout, --settle-timeout: over 0; --delay-ms: 0 or more")
    if args.size % 8 or args.size < 256:
        parser.error("--size: a multiple of 8, at least 256 (the stamp needs the corner)")
    if bool(args.url) != bool(args.pid):
        parser.error("--url and --pid go together")
    if args.url and (args.server_args or args.server_log):
        parser.error("--server-args and --server-log are for the server this script starts, not with --url")
    if args.url and not psutil.pid_exists(args.pid):
        parser.error(f"--pid {args.pid}: no such process")
    return args


def server_options(args: argparse.Namespace) -> list[str]:
    options = ["--pipeline", PIPELINE, *shlex.split(args.server_args)]
    if args.users > DEFAULT_MAX_USERS and not any(o.startswith("--max-users") for o in options):
        options += ["--max-users", str(args.users)]
    return options


async def soak(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    probe = Probe(target.pid)
    async with httpx.AsyncClient(timeout=10) as http:
        state = await health(http, target)
        if state.get("pipeline") != "echo":
            raise SystemExit(f"soak: the server runs {state.get('pipeline')!r}; it needs --pipeline {PIPELINE}")
        if state["users"]:
            raise SystemExit(f"soak: the server has {state['users']} users connected; it needs none")
        if state.get("max_users") and args.users > state["max_users"]:
            raise SystemExit(f"soak: the server takes {state['max_users']} users; --users is {args.users}")
        idle = {"users": 0, **probe.sample()}  # this health check's connection included
    # No other connection during the steady load: its windows count only the users' connections.
    steady = None
    if args.users and args.duration:
        report.progress(f"soak: steady load, {args.users} users, {args.delay_ms:g} ms model, {args.size}x{args.size}, "
                        f"{args.duration:g} s")
        steady = await run_steady(target, probe, args, idle)
        async with httpx.AsyncClient(timeout=10) as http:
            gone = await wait_users(http, target, 0, args.gone_timeout)
            steady["users_after"] = (await health(http, target))["users"]
            steady["users_gone_after_s"] = gone
        f, last = steady["first"], steady["last"]
        report.progress(f"  first window: {f['fps_total']:.1f} fps, p95 {_f(f['latency_ms']['p95'])} ms, "
                        f"RSS {_f(f['rss_mib']['median'])} MiB; last: {last['fps_total']:.1f} fps, "
                        f"p95 {_f(last['latency_ms']['p95'])} ms, RSS {_f(last['rss_mib']['median'])} MiB")
    churn = None
    if args.cycles:
        report.progress(f"soak: churn, {args.cycles} sessions ({', '.join(CLOSE_MODES)} in turn)")
        churn = await Churn(target, probe, args).run()
        report.progress(f"  {churn['failed']} failed; fds {churn['before']['fds']} -> {churn['after']['fds']}, "
                        f"threads {churn['before']['threads']} -> {churn['after']['threads']}")
    return {"idle": idle, "steady": steady, "churn": churn}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = report.environment()["load_average"]
    with ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
            target = Target(url, "ws" + url[len("http"):] if url.startswith("http") else url, args.pid)
            options = ["(already running)"]
        else:
            options = server_options(args)
            report.progress(f"soak: starting the server: server/main.py {' '.join(options)}")
            running = stack.enter_context(run_server(*options))
            target = Target(running.http, running.ws, running.proc.pid, running)
        log_from = len(target.log_lines())  # the start-up's own warnings are not the soak's
        state = httpx.get(f"{target.http}/api/health", timeout=10).json()
        env = report.environment(load_average=load_at_start, gpu=gpu_name(), server_device=state.get("device"),
                                 server_pid=target.pid, fastapi=report._version("fastapi"),
                                 uvicorn=report._version("uvicorn"), websockets=report._version("websockets"))
        results = asyncio.run(soak(target, args))
    # The server has stopped (when this script started it): its whole log, shutdown included.
    log = scan_log(target.log_lines()[log_from:], available=target.running is not None)
    settings = {
        "server": f"server/main.py {' '.join(options)}",
        "users": args.users,
        "duration s": f"{args.duration:g}",
        "windows s": f"{args.window:g} (first after {args.warmup:g})",
        "cycles": args.cycles,
        "model ms": f"{args.delay_ms:g}",
        "size": args.size,
        "quick": args.quick,
    }
    checks = goals(results["steady"], results["churn"], log, args.quick)
    idle = results["idle"]
    if results["steady"]:
        report.print_figure("Soak: steady load, first and last window", env, settings, steady_table(results["steady"]))
    if results["churn"]:
        report.print_figure("Soak: churn, sessions opened and closed", env, settings, churn_tables(results["churn"]))
    report.print_figure("Soak: goals", env, settings, goals_table(checks))
    print(f"\nidle server at the start: {idle['rss_mib']:.1f} MiB, {idle['fds']} fds, {idle['threads']} threads")
    if log["available"]:
        print(f"server log: {log['lines']} lines, {log['connected']} sessions connected, {log['closed']} closed, "
              f"{len(log['problems'])} ERROR lines or tracebacks, {log['warning_count']} warnings")
        for line in (log["problems"] + log["warnings"])[:10]:
            print(f"  {line}")
    else:
        print("server log: not available (--url)")
    for phase in ("steady", "churn"):
        errors = (results[phase] or {}).get("errors") or []
        if errors:
            print(f"{phase}: the server sent errors: {errors[:5]}")
    if warning := report.busy_warning(env):
        print(f"\n{warning}")
    load_at_end = [round(x, 2) for x in os.getloadavg()]
    if load_at_end[0] > 0.5 * (env.get("usable_cores") or 1) + (1 if target.running else 0):
        print(f"\nwarning: the load average was {load_at_end[0]:.2f} at the end (this run's server and clients "
              "count for about 1 or 2 of it): other work may have run alongside; latency and fps are then noisy")
    missed = [c for c in checks if c["judged"] and not c["met"]]
    elapsed = time.perf_counter() - started
    if missed:
        print(f"\nsoak: {len(missed)} goal(s) MISSED: " + "; ".join(c["goal"] for c in missed))
    else:
        print(f"\nsoak: all {sum(1 for c in checks if c['judged'])} judged goals met")
    print(f"soak: done in {elapsed:.0f} s")
    if args.server_log:
        Path(args.server_log).parent.mkdir(parents=True, exist_ok=True)
        Path(args.server_log).write_text("\n".join(target.log_lines()) + "\n")
        print(f"\nwrote {args.server_log}")
    if args.json:
        report.write_json(args.json, {
            "benchmark": "soak", "environment": env, "settings": settings, "args": vars(args),
            "load_average_at_end": load_at_end, **results, "server_log": log, "goals": checks,
            "passed": not missed, "elapsed_s": elapsed,
        })
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
