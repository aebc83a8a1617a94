"""Serving-path benchmark: the real server (`python server/main.py --pipeline bench.echo_pipeline`) driven
by concurrent protocol clients, measuring true end-to-end latency, throughput and server CPU.

    .venv/bin/python bench/serving_path.py --chart docs/serving-latency.png     # about 2 min 40 s
    .venv/bin/python bench/serving_path.py --quick                               # about 20 s (CI)

The echo model (bench/echo_pipeline.py) returns its input frame after `delay_ms` (a sleep: no CPU), so
everything measured is the serving path itself: websocket protocol, JPEG decode, the session slot and
the worker hand-off, JPEG encode, the MJPEG stream, and the event loop between them.

Each client behaves like the web page: it opens its websocket, opens its MJPEG stream (which starts
the frame requests) and answers each `send_frame` with `next_frame`, its parameters (JSON) and a
512x512 JPEG. Every frame carries its number, stamped in the top-left corner as a 6x4 grid of
32-pixel black or white blocks (20 bits of frame number and a 4-bit check) that survive JPEG at any
usual quality; the echo model sends the frame back, so reading the stamp of each MJPEG part tells
which frame it is. Latency is the time from just before the client sends a frame's messages to the
moment the MJPEG part holding that frame has been received: camera frame to screen, less the
camera and the display.

For each model time (`--delays`, default 0 and 50 ms) and number of concurrent users (`--clients`,
default 1, 4, 8), the clients run `--warmup` seconds, then `--duration` seconds are measured:

- fps: outputs received per second, per client and in total;
- latency p50/p95/p99 of the frames sent in the measured window;
- server CPU per frame: the server process's CPU time (user + system, psutil) over the window,
  divided by the outputs delivered in it: the serving cost of one frame;
- client CPU per frame: the same for this benchmark's own process (the clients run on the same
  machine; on 2 cores they take CPU from the server);
- codec per frame: the CPU time libjpeg-turbo takes to decode the clients' frames and encode them
  again at the server's quality (the floor of any server), measured in a thread of this process
  throughout the same window (`CodecFloor`), and the ratio of the server's CPU to it;
- dropped: frames sent in the window whose output never arrived (after a grace period).

Then a burst client sends frames at `--burst-fps` (default 60 a second) without waiting for
`send_frame`, to a `--burst-delay` (default 50 ms) model, for `--burst-duration` (default 60 s): the
server keeps only the newest waiting frame, so the latency of the last `--trend-window` seconds (10)
must be no worse than that of the first. Most burst frames are dropped by design (latest wins);
the server's memory at the start and the end is shown too, since a backlog would grow it.

Run time with the defaults: 6 configurations of about 13 s each, the 60 s burst run and the server's
start-up: about 2 min 40 s. `--quick` takes about 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/serving_path.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import simplejpeg  # noqa: E402
import websockets  # noqa: E402

from bench import report  # noqa: E402
from bench.live import camera_pixels, mjpeg_frames, read_stamp, run_server, stamp  # noqa: E402

PIPELINE = "bench.echo_pipeline"
SIZE = 512
JPEG_QUALITY = 90  # what a page's canvas.toBlob('image/jpeg') gives by default (0.92) or thereabouts
CAMERA_NOISE = 6.0  # sensor noise: 512x512 frames of about 100 KB, as a webcam's

TARGET_CPU_MS = 10.0  # server CPU per frame at 512x512 with 4 clients
TARGET_CODEC_RATIO = 1.3  # ... and at most this times what decoding and encoding those frames costs
SERVER_JPEG_QUALITY = 85  # the server's --jpeg-quality default: what its output frames are encoded at
CODEC_SAMPLE = 8  # frames of each client kept to measure the codec floor on
TARGET_P95_MS = 90.0  # 50 ms model, one client
TREND_TOLERANCE = 1.10  # last window's p95 within 10 % of the first's


# --- clients -------------------------------------------------------------------------------------


@dataclass
class ClientStats:
    sent: dict[int, float] = field(default_factory=dict)  # frame number -> time sent
    received: dict[int, float] = field(default_factory=dict)  # frame number -> time its output arrived
    unreadable: int = 0  # outputs whose stamp did not read back
    errors: list[str] = field(default_factory=list)


class BenchClient:
    """One user. Ping-pong (like the page) unless `burst_fps` is set: then it sends at that rate,
    ignoring send_frame. `camera_fps`: a ping-pong user whose camera gives that many frames a second
    (it answers a send_frame no sooner than 1/camera_fps after its previous frame)."""

    def __init__(self, server: Any, http: httpx.AsyncClient, params: dict[str, Any], seed: int,
                 size: int = SIZE, burst_fps: float | None = None, camera_fps: float | None = None) -> None:
        self.server = server
        self.http = http
        self.user_id = str(uuid.uuid4())
        self.params_json = json.dumps(params)
        self.pixels = camera_pixels(seed, size, size, noise=CAMERA_NOISE)
        self.burst_fps = burst_fps
        self.camera_interval = 1.0 / camera_fps if camera_fps else 0.0
        self.last_sent = 0.0
        self.stats = ClientStats()
        self.sending = True
        self.number = 0
        self.recent: deque[bytes] = deque(maxlen=CODEC_SAMPLE)  # the last frames sent, for the codec floor
        self.ws: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.ws = await websockets.connect(f"{self.server.ws}/api/ws/{self.user_id}", max_size=None)
        first = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if first.get("status") != "connected":
            raise RuntimeError(f"client could not connect: {first}")
        # The stream starts the frame requests (ping-pong); a burst client sends regardless.
        self._tasks = [asyncio.create_task(self._read_ws()), asyncio.create_task(self._read_stream())]
        if self.burst_fps:
            self._tasks.append(asyncio.create_task(self._burst()))

    async def stop(self, grace: float) -> None:
        """Stop sending; wait up to `grace` seconds for the outputs of the frames already sent; close."""
        self.sending = False
        deadline = time.perf_counter() + grace
        while time.perf_counter() < deadline and self._last_outstanding():
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()

    def _last_outstanding(self) -> bool:
        # Ping-pong: every frame sent should come back. Burst: only the newest is sure to.
        if not self.stats.sent:
            return False
        if self.burst_fps:
            last = max(self.stats.sent)
            return last not in self.stats.received
        return any(number not in self.stats.received for number in self.stats.sent)

    async def _send_frame(self) -> None:
        number = self.number
        self.number += 1
        pixels = self.pixels.copy()
        stamp(pixels, number)
        jpeg = simplejpeg.encode_jpeg(pixels, quality=JPEG_QUALITY, colorspace="RGB")
        self.recent.append(jpeg)
        self.stats.sent[number] = time.perf_counter()
        await self.ws.send('{"status": "next_frame"}')
        await self.ws.send(self.params_json)
        await self.ws.send(jpeg)

    async def _read_ws(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                status = message.get("status")
                if status == "send_frame":
                    if self.sending and not self.burst_fps:
                        if self.camera_interval:  # the camera's next frame
                            await asyncio.sleep(max(0.0, self.last_sent + self.camera_interval - time.perf_counter()))
                            self.last_sent = time.perf_counter()
                        await self._send_frame()
                elif status in ("error", "timeout"):
                    self.stats.errors.append(str(message.get("message")))
        except websockets.ConnectionClosed:
            pass

    async def _read_stream(self) -> None:
        try:
            async for jpeg in mjpeg_frames(self.server, self.user_id, self.http):
                arrived = time.perf_counter()
                number = read_stamp(jpeg)
                if number is None:
                    self.stats.unreadable += 1
                else:
                    self.stats.received.setdefault(number, arrived)
        except (httpx.HTTPError, AssertionError):
            pass  # the session ended

    async def _burst(self) -> None:
        interval = 1.0 / float(self.burst_fps or 1)
        next_at = time.perf_counter()
        while self.sending:
            await self._send_frame()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


# --- one configuration -----------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process, tree: bool = False) -> float:
    """CPU time (user + system) of a process, or of it and all its descendants (a server with
    --replicas: its Ray processes and replicas are its children)."""
    processes = [process, *process.children(recursive=True)] if tree else [process]
    total = 0.0
    for each in processes:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def output_quality(server_args: str) -> int:
    """The JPEG quality the server encodes its output frames at: its --jpeg-quality, or the default."""
    words = shlex.split(server_args)
    for i, word in enumerate(words):
        if word == "--jpeg-quality" and i + 1 < len(words):
            return int(words[i + 1])
        if word.startswith("--jpeg-quality="):
            return int(word.split("=", 1)[1])
    return SERVER_JPEG_QUALITY


class CodecFloor:
    """CPU time to decode a frame (to RGB, as the server does) and encode the output (at the server's
    quality, 4:2:0) with libjpeg-turbo: what no server can avoid spending per frame.

    Measured in a thread of this process throughout the window in which the server's CPU is measured,
    over the clients' own frames, and averaged as the server's figure is: on a virtual machine the same
    work costs up to 40 % more on one virtual core than on the other, or at one moment than the next,
    so a floor taken at another time (or the best of a few passes) is not the same machine as the
    server's. After each pass over the frames the thread waits four times as long (it works a fifth of
the time, `DUTY`), so it takes little from the run."""

    DUTY = 0.2

    def __init__(self, jpegs: list[bytes], quality: int) -> None:
        self.jpegs = jpegs
        self.quality = quality
        self.seconds = 0.0
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codec-floor", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            wall = time.perf_counter()
            for data in self.jpegs:
                started = time.thread_time()
                pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
                simplejpeg.encode_jpeg(pixels, quality=self.quality, colorspace="RGB", colorsubsampling="420")
                self.seconds += time.thread_time() - started
                self.frames += 1
            self._stop.wait((time.perf_counter() - wall) * (1 / self.DUTY - 1))

    def __enter__(self) -> CodecFloor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def ms_per_frame(self) -> float | None:
        return self.seconds * 1000.0 / self.frames if self.frames else None


def _ms(values: list[float]) -> list[float]:
    return [v * 1000.0 for v in values]


def window_stats(stats: ClientStats, start: float, end: float) -> dict[str, Any]:
    sent = [n for n, t in stats.sent.items() if start <= t < end]
    latencies = [stats.received[n] - stats.sent[n] for n in sent if n in stats.received]
    outputs = sum(1 for t in stats.received.values() if start <= t < end)
    return {
        "sent": len(sent),
        "seen": len(latencies),
        "dropped": len(sent) - len(latencies),
        "outputs": outputs,
        "fps": outputs / (end - start) if end > start else 0.0,
        "latency_ms": report.stats(_ms(latencies)),
    }


async def wait_for_no_users(server: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if (await http.get(f"{server.http}/api/health", timeout=5)).json()["users"] == 0:
                return
            await asyncio.sleep(0.05)


async def run_configuration(server: Any, delay_ms: float, clients: int, warmup: float, duration: float,
                            size: int, output_quality: int, params: dict[str, Any] | None = None,
                            camera_fps: float | None = None) -> dict[str, Any]:
    """`params`: what each client sends with its frames (default: the echo model's, `delay_ms` and the
    size); `camera_fps`: the clients' camera rate (default: none, they answer every send_frame at once)."""
    params = params if params is not None else {"delay_ms": delay_ms, "width": size, "height": size}
    server_process = psutil.Process(server.proc.pid)
    own_process = psutil.Process()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), limits=limits) as http:
        users = [BenchClient(server, http, params, seed=i, size=size, camera_fps=camera_fps) for i in range(clients)]
        await asyncio.gather(*(user.start() for user in users))
        await asyncio.sleep(warmup)
        with CodecFloor([jpeg for user in users for jpeg in user.recent], output_quality) as codec:
            # This process's CPU less the floor's: the clients' own.
            start, server_cpu0 = time.perf_counter(), cpu_seconds(server_process, tree=True)
            own_cpu0 = cpu_seconds(own_process) - codec.seconds
            await asyncio.sleep(duration)
            end, server_cpu1 = time.perf_counter(), cpu_seconds(server_process, tree=True)
            own_cpu1 = cpu_seconds(own_process) - codec.seconds
        await asyncio.gather(*(user.stop(grace=1.0 + 2 * delay_ms / 1000.0) for user in users))
    await wait_for_no_users(server)

    per_client = [window_stats(user.stats, start, end) for user in users]
    all_latencies = [
        user.stats.received[n] - t for user in users for n, t in user.stats.sent.items()
        if start <= t < end and n in user.stats.received
    ]
    outputs = sum(c["outputs"] for c in per_client)
    server_cpu_ms = (server_cpu1 - server_cpu0) * 1000.0 / outputs if outputs else None
    codec_ms = codec.ms_per_frame
    return {
        "delay_ms": delay_ms,
        "clients": clients,
        "duration_s": end - start,
        "fps_total": outputs / (end - start),
        "fps_per_client": report.stats([c["fps"] for c in per_client]),
        "latency_ms": report.stats(_ms(all_latencies)),
        "server_cpu_ms_per_frame": server_cpu_ms,
        "codec_ms_per_frame": codec_ms,
        "cpu_to_codec": server_cpu_ms / codec_ms if server_cpu_ms is not None and codec_ms else None,
        "server_cpu_share": (server_cpu1 - server_cpu0) / (end - start),
        "client_cpu_ms_per_frame": (own_cpu1 - own_cpu0) * 1000.0 / outputs if outputs else None,
        "sent": sum(c["sent"] for c in per_client),
        "dropped": sum(c["dropped"] for c in per_client),
        "unreadable": sum(user.stats.unreadable for user in users),
        "errors": [e for user in users for e in user.stats.errors][:10],
        "per_client": per_client,
    }


async def run_burst(server: Any, delay_ms: float, fps: float, duration: float, window: float, size: int) -> dict[str, Any]:
    params = {"delay_ms": delay_ms, "width": size, "height": size}
    server_process = psutil.Process(server.proc.pid)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None)) as http:
        user = BenchClient(server, http, params, seed=99, size=size, burst_fps=fps)
        rss_start = server_process.memory_info().rss
        await user.start()
        await asyncio.sleep(duration)
        rss_end = server_process.memory_info().rss
        await user.stop(grace=1.0 + 2 * delay_ms / 1000.0)
    await wait_for_no_users(server)
    sent_times = sorted(user.stats.sent.values())
    start = sent_times[0] if sent_times else time.perf_counter()
    end = start + duration
    first, last, whole = (window_stats(user.stats, a, b) for a, b in
                          ((start, start + window), (end - window, end), (start, end)))
    return {
        "delay_ms": delay_ms,
        "burst_fps": fps,
        "duration_s": duration,
        "window_s": window,
        "first": first,
        "last": last,
        "whole": whole,
        "sent_fps": whole["sent"] / duration,
        "server_rss_mib": [rss_start / 2**20, rss_end / 2**20],
        "unreadable": user.stats.unreadable,
        "errors": user.stats.errors[:10],
    }


# --- report ----------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def configurations_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        lat, per = r["latency_ms"], r["fps_per_client"]
        rows.append([
            f"{r['delay_ms']:g}", r["clients"], _f(r["fps_total"]), f"{_f(per['median'])} [{_f(per['min'])}-{_f(per['max'])}]",
            _f(lat["p50"]), _f(lat["p95"]), _f(lat["p99"]), _f(r["server_cpu_ms_per_frame"], 2),
            _f(r["codec_ms_per_frame"], 2), _f(r["cpu_to_codec"], 2), _f(r["client_cpu_ms_per_frame"], 2), r["sent"],
            r["dropped"],
        ])
    headers = ["model ms", "users", "fps total", "fps per user med [min-max]", "latency p50 ms", "p95 ms", "p99 ms",
               "server CPU ms/frame", "codec ms/frame", "CPU / codec", "client CPU ms/frame", "frames sent", "dropped"]
    return report.table(headers, rows, "r" * len(headers))


def clients_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        for i, c in enumerate(r["per_client"], 1):
            lat = c["latency_ms"]
            rows.append([f"{r['delay_ms']:g}", r["clients"], i, _f(c["fps"]), _f(lat["p50"]), _f(lat["p95"]),
                         _f(lat["p99"]), c["sent"], c["seen"], c["dropped"]])
    headers = ["model ms", "users", "client", "fps", "latency p50 ms", "p95 ms", "p99 ms", "sent", "seen", "dropped"]
    return report.table(headers, rows, "r" * len(headers))


def burst_table(burst: dict[str, Any]) -> str:
    rows = []
    for key, label in (("first", f"first {burst['window_s']:g} s"), ("last", f"last {burst['window_s']:g} s"),
                       ("whole", f"whole {burst['duration_s']:g} s")):
        w = burst[key]
        lat = w["latency_ms"]
        rows.append([label, w["sent"], w["seen"], _f(w["fps"]), _f(lat["p50"]), _f(lat["p95"]), _f(lat["p99"]),
                     _f(lat["max"])])
    rss = burst["server_rss_mib"]
    note = (f"one client sending {burst['sent_fps']:.1f} frames/s without waiting for send_frame to a "
            f"{burst['delay_ms']:g} ms model; 'seen': frames sent in the window whose output arrived (the others were "
            f"replaced by newer ones: latest wins); server memory {rss[0]:.0f} MiB at the start, {rss[1]:.0f} MiB at the end")
    headers = ["window (by time sent)", "frames sent", "seen", "outputs/s", "latency p50 ms", "p95 ms", "p99 ms", "max ms"]
    return report.table(headers, rows, "l" + "r" * 7) + "\n\n" + note


def targets(results: list[dict[str, Any]], burst: dict[str, Any] | None, quick: bool) -> tuple[str, list[dict[str, Any]]]:
    checks: list[dict[str, Any]] = []
    for r in results:
        if r["clients"] == 4:
            value = r["server_cpu_ms_per_frame"]
            checks.append({"target": f"server CPU per frame, 4 users, {r['delay_ms']:g} ms model: <= {TARGET_CPU_MS:g} ms",
                           "measured": _f(value, 2), "met": value is not None and value <= TARGET_CPU_MS})
        if r["clients"] == 4 and r["delay_ms"] == 0:
            ratio = r["cpu_to_codec"]
            checks.append({
                "target": f"server CPU per frame, 4 users, 0 ms model: <= {TARGET_CODEC_RATIO:g} x the JPEG decode + encode",
                "measured": f"{_f(r['server_cpu_ms_per_frame'], 2)} / {_f(r['codec_ms_per_frame'], 2)} ms = {_f(ratio, 2)}",
                "met": ratio is not None and ratio <= TARGET_CODEC_RATIO,
            })
    one = next((r for r in results if r["clients"] == 1 and r["delay_ms"] == 50), None)
    target = f"p95 latency, 1 user, 50 ms model: <= {TARGET_P95_MS:g} ms"
    if one:
        value = one["latency_ms"]["p95"]
        checks.append({"target": target, "measured": _f(value), "met": value is not None and value <= TARGET_P95_MS})
    else:
        checks.append({"target": target, "measured": "-", "met": None})
    target = "burst client: last-window p95 no worse than the first (within 10 %)"
    if burst and burst["first"]["latency_ms"]["n"] and burst["last"]["latency_ms"]["n"]:
        first, last = burst["first"]["latency_ms"]["p95"], burst["last"]["latency_ms"]["p95"]
        checks.append({"target": target, "measured": f"{first:.1f} -> {last:.1f}", "met": last <= first * TREND_TOLERANCE})
    else:
        checks.append({"target": target, "measured": "-", "met": None})
    rows = []
    for check in checks:
        if check["met"] is None:
            verdict = "not measured by this run"
        elif quick:
            verdict = f"not judged (--quick){': would be met' if check['met'] else ': would be missed'}"
        else:
            verdict = "met" if check["met"] else "MISSED"
        check["verdict"] = verdict
        rows.append([check["target"], check["measured"], verdict])
    return report.table(["target", "measured", "verdict"], rows, "lrl"), checks


def draw_chart(path: str, results: list[dict[str, Any]], env: dict[str, Any], settings: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    delays = sorted({r["delay_ms"] for r in results})
    users = sorted({r["clients"] for r in results})
    for i, delay in enumerate(delays):
        rows = sorted((r for r in results if r["delay_ms"] == delay), key=lambda r: r["clients"])
        x = [r["clients"] for r in rows]
        ax.plot(x, [r["latency_ms"]["p50"] for r in rows], marker="o", color=f"C{i}", label=f"{delay:g} ms model, p50")
        ax.plot(x, [r["latency_ms"]["p95"] for r in rows], marker="s", linestyle="--", color=f"C{i}",
                label=f"{delay:g} ms model, p95")
    ax.set_xticks(users)
    ax.set_xlabel("concurrent users (ping-pong clients)")
    ax.set_ylabel("end-to-end latency, ms (frame sent to its output received)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Serving path, echo model, {settings['size']}x{settings['size']} JPEG frames")
    footer = "\n".join(report.context_lines(env, settings))
    fig.text(0.01, -0.02, footer, fontsize=6, va="top", ha="left", wrap=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    print(f"\nwrote {path}")


# --- main -------------------------------------------------------------------------------------------


def _numbers(values: list[str], kind: type) -> list[Any]:
    return [kind(item) for value in values for item in value.split(",") if item]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="End-to-end latency, fps and server CPU of the serving path, "
                                                 "with the echo stand-in model and concurrent protocol clients.")
    parser.add_argument("--clients", nargs="+", default=None, metavar="N", help="numbers of concurrent users; default 1,4,8")
    parser.add_argument("--delays", nargs="+", default=None, metavar="MS", help="model times in ms; default 0,50")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per configuration; default 10 (--quick: 1)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before measuring; default 1 (--quick: 0.3)")
    parser.add_argument("--burst-duration", type=float, default=None,
                        help="seconds of the burst run (0: skip it); default 60 (--quick: 3)")
    parser.add_argument("--burst-fps", type=float, default=60.0, help="frames per second the burst client sends; default 60")
    parser.add_argument("--burst-delay", type=float, default=50.0, help="model time (ms) of the burst run; default 50")
    parser.add_argument("--trend-window", type=float, default=None,
                        help="seconds compared at the start and the end of the burst run; default 10 (--quick: 1)")
    parser.add_argument("--size", type=int, default=SIZE, help="frame width and height; default 512")
    parser.add_argument("--replicas", type=int, default=1,
                        help="also run the configurations against a server with --replicas N (Ray Serve) and compare")
    parser.add_argument("--server-args", default="", metavar="ARGS",
                        help="extra server options, one string, e.g. --server-args='--jpeg-quality 70'")
    parser.add_argument("--quick", action="store_true", help="a few seconds in all (CI)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--chart", metavar="PNG", help="draw latency p50/p95 against users, per model time (matplotlib)")
    args = parser.parse_args(argv)
    quick = args.quick
    try:
        args.clients = _numbers(args.clients, int) if args.clients else [1, 4, 8]
        args.delays = _numbers(args.delays, float) if args.delays else [0.0, 50.0]
    except ValueError:
        parser.error("--clients and --delays take numbers, e.g. --clients 1,4,8 --delays 0,50")
    if any(c < 1 for c in args.clients) or any(d < 0 for d in args.delays):
        parser.error("--clients must be at least 1 and --delays at least 0")
    args.duration = args.duration if args.duration is not None else (1.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if quick else 1.0)
    args.burst_duration = args.burst_duration if args.burst_duration is not None else (3.0 if quick else 60.0)
    args.trend_window = args.trend_window if args.trend_window is not None else (1.0 if quick else 10.0)
    if args.burst_duration and args.trend_window * 2 > args.burst_duration:
        parser.error("--trend-window must be at most half of --burst-duration")
    if args.size % 8 or args.size < 256:
        parser.error("--size: a multiple of 8, at least 256 (the stamp needs the corner)")
    if args.chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--chart needs matplotlib: pip install -e .[bench]")
    return args


def gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


async def run_all(args: argparse.Namespace, server: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    results = []
    for delay in args.delays:
        for clients in args.clients:
            report.progress(f"serving_path: {clients} user(s), {delay:g} ms model, {args.duration:g} s")
            result = await run_configuration(
                server, delay, clients, args.warmup, args.duration, args.size, output_quality(args.server_args)
            )
            lat = result["latency_ms"]
            report.progress(f"  {result['fps_total']:.1f} fps, p50 {_f(lat['p50'])} ms, p95 {_f(lat['p95'])} ms, "
                            f"server CPU {_f(result['server_cpu_ms_per_frame'], 2)} ms/frame, dropped {result['dropped']}")
            results.append(result)
    burst = None
    if args.burst_duration:
        report.progress(f"serving_path: burst client at {args.burst_fps:g} fps, {args.burst_delay:g} ms model, "
                        f"{args.burst_duration:g} s")
        burst = await run_burst(server, args.burst_delay, args.burst_fps, args.burst_duration, args.trend_window, args.size)
    return results, burst


def run_replicated(args: argparse.Namespace, server_args: list[str]) -> list[dict[str, Any]]:
    """The configurations again, against a server with --replicas (no burst run)."""
    replica_args = [*server_args, "--replicas", str(args.replicas), "--max-users", str(max(8, max(args.clients)))]
    report.progress(f"serving_path: starting the server: server/main.py {' '.join(replica_args)}")
    with run_server(*replica_args, startup_timeout=300) as server:
        burstless = argparse.Namespace(**{**vars(args), "burst_duration": 0})
        results, _ = asyncio.run(run_all(burstless, server))
    return results


def replicas_table(single: list[dict[str, Any]], replicated: list[dict[str, Any]]) -> str:
    rows = []
    for one, many in zip(single, replicated):
        rows.append([
            f"{one['delay_ms']:g}", one["clients"],
            _f(one["latency_ms"]["p50"]), _f(many["latency_ms"]["p50"]),
            _f(one["latency_ms"]["p95"]), _f(many["latency_ms"]["p95"]),
            _f(one["server_cpu_ms_per_frame"], 2), _f(many["server_cpu_ms_per_frame"], 2),
            _f(one["fps_total"]), _f(many["fps_total"]),
        ])
    headers = ["model ms", "users", "p50 ms, single", "p50 ms, Ray", "p95 ms, single", "p95 ms, Ray",
               "CPU ms/frame, single", "CPU ms/frame, Ray", "fps, single", "fps, Ray"]
    return report.table(headers, rows, "r" * len(headers))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = report.environment()["load_average"]  # before the server's start-up adds to it
    server_args = ["--pipeline", PIPELINE, *shlex.split(args.server_args)]
    report.progress(f"serving_path: starting the server: server/main.py {' '.join(server_args)}")
    with run_server(*server_args) as server:
        health = server.health()
        env = report.environment(
            load_average=load_at_start,
            gpu=gpu_name(),
            fastapi=report._version("fastapi"),
            uvicorn=report._version("uvicorn"),
            websockets=report._version("websockets"),
            server_device=health.get("device"),
            server_pid=server.proc.pid,
        )
        settings = {
            "server": f"server/main.py {' '.join(server_args)} (device {health.get('device')})",
            "size": args.size,
            "client JPEG quality": JPEG_QUALITY,
            "users": args.clients,
            "model ms": [f"{d:g}" for d in args.delays],
            "warm-up s": args.warmup,
            "measured s": args.duration,
            "quick": args.quick,
        }
        results, burst = asyncio.run(run_all(args, server))
    if args.replicas > 1:
        replicated = run_replicated(args, server_args)

    problems = [e for r in results for e in r["errors"]] + (burst["errors"] if burst else [])
    unreadable = sum(r["unreadable"] for r in results) + (burst["unreadable"] if burst else 0)
    report.print_figure(
        "Serving path: per configuration", env, settings,
        configurations_table(results) + "\n\nlatency: frame sent to its output received on the MJPEG stream, over the "
        "frames sent in the measured window; CPU: process CPU time (user + system) per output frame; codec: CPU time, in "
        "a thread of this process during the same window, to decode the clients' frames and encode them again at the "
        "server's quality with libjpeg-turbo (the floor of any server); dropped: sent in the window, never seen in the output",
    )
    report.print_figure("Serving path: per client", env, settings, clients_table(results))
    if burst:
        burst_settings = {**settings, "burst fps": args.burst_fps, "burst model ms": f"{args.burst_delay:g}",
                          "burst s": args.burst_duration}
        report.print_figure("Serving path: latency trend, burst client", env, burst_settings, burst_table(burst))
    if args.replicas > 1:
        report.print_figure(
            f"Serving path: the Ray hop, --replicas {args.replicas}", env, settings,
            replicas_table(results, replicated) + "\n\nthe same configurations against the server started with "
            f"--replicas {args.replicas} (local Ray, CPU replicas of the echo model); server CPU there is the whole "
            "process tree: the gateway, Ray's own processes and the replicas",
        )
    target_text, checks = targets(results, burst, args.quick)
    report.print_figure("Serving path: targets", env, settings, target_text)
    if unreadable:
        print(f"\nwarning: {unreadable} output frame(s) had no readable stamp")
    if problems:
        print(f"\nwarning: the server sent errors: {problems[:5]}")
    report.finish("serving_path", started, env, args.json, settings=settings, results=results, burst=burst,
                  targets=checks, replicated=replicated if args.replicas > 1 else None)
    if args.chart:
        draw_chart(args.chart, results, env, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
