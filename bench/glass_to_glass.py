"""Glass-to-glass benchmark: the real page in headless Chromium, a fake camera playing a clip whose
frames carry their index, the echo model, and both transports (WebRTC and MJPEG), on loopback and over
a link shaped to 5 Mbit/s.

    .venv/bin/python bench/glass_to_glass.py --json docs/bench/glass-to-glass.json --chart docs/bench/glass-to-glass.png
    .venv/bin/python bench/glass_to_glass.py --quick          # loopback only, a few seconds a transport (the tests)

Run time with the defaults: about 4 min (two servers, four runs of a 30 s warm-up and 20 s
measured); `--quick` about 30 s. Only one run at a time on a machine (the shaped run's namespace has
a fixed name).

The clip (`write_clip`, made once in the temporary folder) looks like a camera to the codecs: a
textured scene (smooth light, furniture with hard edges, fine texture) panned like a hand-held camera,
an object moving across it, and fresh sensor noise in every frame (640x480, 30 fps). Its centre holds a
flat 64x64 patch whose colour, one of 5x5x5 levels, codes the frame's index modulo 125: the page's crop
(cover) keeps the centre, and a flat colour survives any resize and codec, though only as a small
patch. The clip has 125 frames, so its loop keeps the code sequence unbroken.

The server runs `--pipeline bench.echo_pipeline` (the output is the input, cropped to 512x512), through
bench/glass_to_glass_trace.py (`--no-trace`: without), which records each frame's way through the
server. For each transport a Node script (bench/glass_to_glass.mjs) starts Chromium with the clip as
its camera, opens the page with `?transport=...`, presses Start, and instruments the page from outside:

- input frame k presented: requestVideoFrameCallback on the camera preview
  (`[data-testid=input-video]`); its patch is read by drawing the frame's centre to a small canvas;
- output frame k shown: requestVideoFrameCallback on the WebRTC `<video>`; for the MJPEG `<img>`, the
  load of each new frame, then the next animation frame;
- both timestamps are the rendering frame's time (the `now` of requestVideoFrameCallback, the
  timestamp of requestAnimationFrame), so latency = output shown - input shown, on the same clock, in
  steps of one display frame (16.7 ms).

Figures, over `--duration` seconds after `--warmup` seconds from the first output:
- latency p50/p95 of output frame k: from the presentation of input frame k (the latest presentation of
  that code before the output) to the output's; frames whose input presentation the page did not
  report (a busy page skips callbacks) are left out ("matched/shown");
- output fps: frames the page presented a second (the <video>'s presentedFrames, the <img>'s loads);
  new frames/s: distinct codes seen a second;
- bytes per second per user, up and down: WebRTC's transport (the selected ICE candidate pair,
  getStats: RTP, RTCP and the data channel), the websocket's messages, and the HTTP responses (the
  MJPEG stream) as Chromium's network stack counts them (CDP `Network.dataReceived`); over the shaped
  link also the bytes on the wire (the veth's counters: IP, TCP and UDP headers included);
- server CPU per frame: the server process's CPU time (psutil) over the window, over the frames the
  server generated in it (/api/health `frames_generated`);
- WebRTC's tracks as Chromium's getStats sees them, and its traffic as it ramps up;
- where the time goes: the page's timestamps joined with the server trace by frame code (wall clock).

Shaped run: Chromium runs in a network namespace of its own (`ip netns exec`), joined to the server's
by a veth pair shaped with `tc qdisc ... tbf` in both directions (`--rate`, `--tbf-burst`,
`--tbf-latency`); the server listens on the root side's address. Needs root and `ip netns`; without
them the shaped run is skipped with the reason. Namespace and veth are removed at the end, also on
failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/glass_to_glass.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench import report  # noqa: E402
from bench.live import LISTENING, RunningServer, server_env  # noqa: E402

PIPELINE = "bench.echo_pipeline"
DRIVER = REPO_ROOT / "bench" / "glass_to_glass.mjs"
TRACER = REPO_ROOT / "bench" / "glass_to_glass_trace.py"
NODE = os.environ.get("LD_NODE", "node")
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

# The clip: a camera's 4:3 at 30 fps; 125 frames, one loop of the codes.
CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS = 640, 480, 30
CODES = 125
PATCH = 64  # the coded patch, pixels of the clip (about 68 in the 512x512 the page sends)
LEVELS = (24, 76, 128, 180, 232)  # RGB levels of the code's digits: 52 apart
TOLERANCE = 24  # a read colour further than this (Euclidean, 0-255) from every code's: no code
MAX_SPREAD = 48  # the read patch must be flat: max - min of a channel over the read square
SENSOR_NOISE_Y, SENSOR_NOISE_C = 3.0, 1.5  # fresh Gaussian noise a frame, in Y and in Cb/Cr (8-bit)

# The shaped link.
NETNS = "ldg2g"
VETH_ROOT, VETH_NS = "ldg2g0", "ldg2g1"
ADDR_ROOT, ADDR_NS = "10.213.0.1", "10.213.0.2"

# Targets (judged on the full run only).
DISPLAY_FRAME_MS = 17.0  # loopback: WebRTC's p50 within one display frame of MJPEG's
SHAPED_MIN_FPS = 25.0
SHAPED_MAX_P95_MS = 150.0
SHAPED_MAX_BYTES_RATIO = 0.25  # WebRTC's bytes per user at most a quarter of MJPEG's


# ----------------------------------------------------------------------------------------- the clip
def code_colour(k: int) -> tuple[int, int, int]:
    """The patch colour (R, G, B) of frame k: k mod 125 in base 5, one digit a channel."""
    k %= CODES
    return LEVELS[k // 25], LEVELS[(k // 5) % 5], LEVELS[k % 5]


def stretched(rgb: Any) -> np.ndarray:
    """What the server makes of a colour that the page sends over WebRTC: Chromium encodes its canvas
    track as full-range BT.709 YUV, aiortc decodes it as limited-range BT.601 (the page's colour-space
    RTP header extension is not negotiated), so contrast and saturation are stretched. Measured here:
    (232, 180, 24) arrives as (241, 194, 19); this model gives (244, 197, 21)."""
    r, g, b = np.moveaxis(np.asarray(rgb, dtype=float), -1, 0)
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    cb, cr = (b - y) / 1.8556, (r - y) / 1.5748
    y = 1.164 * (y - 16)
    return np.clip(np.stack([y + 1.596 * cr, y - 0.392 * cb - 0.813 * cr, y + 2.017 * cb], axis=-1), 0, 255)


PALETTES = {  # the colours a read patch is compared with: as sent, and as the WebRTC path stretches them
    "as sent": np.array([code_colour(k) for k in range(CODES)], dtype=float),
}
PALETTES["stretched"] = stretched(PALETTES["as sent"])


def decode_colours(colours: np.ndarray, palette: str = "as sent") -> tuple[np.ndarray, np.ndarray]:
    """The code of each read colour (N x 3) and its distance to that code's colour; -1 where the
    nearest code is further than TOLERANCE."""
    colours = np.asarray(colours, dtype=float).reshape(-1, 3)
    distances = np.linalg.norm(colours[:, None, :] - PALETTES[palette][None, :, :], axis=-1)
    codes = distances.argmin(axis=1)
    nearest = distances[np.arange(len(codes)), codes]
    return np.where(nearest <= TOLERANCE, codes, -1), nearest


def decode_colour(r: float, g: float, b: float, palette: str = "as sent") -> int | None:
    """The code of one read colour, or None."""
    code = int(decode_colours(np.array([[r, g, b]]), palette)[0][0])
    return None if code < 0 else code


def _smooth(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Random values on a coarse grid of `cells`, upsampled bicubically to `shape`: smooth structure."""
    from PIL import Image

    out = np.empty((*shape, channels), dtype=np.float32)
    for c in range(channels):
        coarse = rng.uniform(0, 1, (cells[1], cells[0])).astype(np.float32)
        out[..., c] = np.asarray(Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.BICUBIC))
    return out


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A room-like still scene, float RGB 0-255: light, furniture, texture."""
    from PIL import Image, ImageDraw

    light = 60 + 120 * _smooth(rng, (height, width), (6, 5))  # walls and light falloff
    image = Image.fromarray(np.clip(light, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(14):  # furniture, frames, shelves: hard edges
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x1, y1 = x0 + rng.integers(30, width // 3), y0 + rng.integers(30, height // 3)
        colour = tuple(int(v) for v in rng.integers(20, 235, 3))
        if rng.random() < 0.7:
            draw.rectangle([x0, y0, x1, y1], fill=colour, outline=tuple(max(0, v - 50) for v in colour), width=3)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    for _ in range(30):  # thin lines: cables, edges of books
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        draw.line([x0, y0, x0 + rng.integers(-150, 150), y0 + rng.integers(-150, 150)],
                  fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=int(rng.integers(1, 4)))
    scene = np.asarray(image, dtype=np.float32)
    texture = 22 * (_smooth(rng, (height, width), (width // 3, height // 3), 1) - 0.5)  # fabric, wood, plaster
    fine = 10 * (rng.uniform(0, 1, (height, width, 1)).astype(np.float32) - 0.5)  # still fine grain
    return np.clip(scene + texture + fine, 0, 255)


def _rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited range (what Chromium assumes for a y4m camera), chroma averaged over 2x2."""
    r, g, b = (rgb[..., i] / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    return y, sub(cb), sub(cr)


def clip_frames(width: int = CLIP_WIDTH, height: int = CLIP_HEIGHT, frames: int = CODES,
                seed: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The clip's frames as uint8 Y, Cb, Cr planes (4:2:0). Periodic over `frames` (camera path and
    moving object), so that its loop has no jump; the noise is new in every frame."""
    rng = np.random.default_rng(seed)
    margin_x, margin_y = width // 6, height // 6
    scene = _scene(rng, height + 2 * margin_y, width + 2 * margin_x)
    blob = _smooth(rng, (120, 120), (5, 5)) * 180 + 40  # the moving object: a textured disc
    yy, xx = np.mgrid[0:120, 0:120]
    disc = ((yy - 60) ** 2 + (xx - 60) ** 2) < 58 ** 2
    px0, py0 = (width - PATCH) // 2, (height - PATCH) // 2
    for k in range(frames):
        phase = 2 * np.pi * k / frames
        # The hand-held pan: a slow sway and a faster bob, whole pixels.
        ox = margin_x + int(round(0.8 * margin_x * np.sin(phase)))
        oy = margin_y + int(round(0.6 * margin_y * np.sin(2 * phase + 0.5)))
        frame = scene[oy:oy + height, ox:ox + width].copy()
        # The object crosses the frame on a Lissajous path (kept clear of the centre by the patch drawn over it).
        bx = int((width - 120) * (0.5 + 0.45 * np.sin(phase * 2 + 1.0)))
        by = int((height - 120) * (0.5 + 0.45 * np.sin(phase * 3)))
        region = frame[by:by + 120, bx:bx + 120]
        region[disc] = blob[disc]
        y, cb, cr = _rgb_to_yuv420(frame)
        y += rng.normal(0, SENSOR_NOISE_Y, y.shape)
        cb += rng.normal(0, SENSOR_NOISE_C, cb.shape)
        cr += rng.normal(0, SENSOR_NOISE_C, cr.shape)
        # The code: a flat patch, noise-free, on even coordinates (whole chroma samples).
        patch = np.empty((PATCH, PATCH, 3), dtype=np.float32)
        patch[:] = code_colour(k)
        py, pcb, pcr = _rgb_to_yuv420(patch)
        y[py0:py0 + PATCH, px0:px0 + PATCH] = py
        cb[py0 // 2:(py0 + PATCH) // 2, px0 // 2:(px0 + PATCH) // 2] = pcb
        cr[py0 // 2:(py0 + PATCH) // 2, px0 // 2:(px0 + PATCH) // 2] = pcr
        yield tuple(np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, cb, cr))  # type: ignore[misc]


def write_clip(path: str | Path, width: int = CLIP_WIDTH, height: int = CLIP_HEIGHT, frames: int = CODES,
               fps: int = CLIP_FPS) -> Path:
    """The clip as YUV4MPEG2 (4:2:0), which Chromium's fake camera plays, looping. Written under
    another name and then renamed: a reader never sees half a clip."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    with partial.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for planes in clip_frames(width, height, frames):
            out.write(b"FRAME\n")
            for plane in planes:
                out.write(plane.tobytes())
    partial.replace(path)
    return path


CLIP_VERSION = 1  # bump when the clip's content changes: the cached one is then made again


def cached_clip() -> Path:
    """The clip, made once per machine (about 5 s, 58 MB) in the temporary folder and reused."""
    path = Path(tempfile.gettempdir()) / f"ld-g2g-clip-v{CLIP_VERSION}-{CLIP_WIDTH}x{CLIP_HEIGHT}-{CODES}.y4m"
    expected = len(f"YUV4MPEG2 W{CLIP_WIDTH} H{CLIP_HEIGHT} F{CLIP_FPS}:1 Ip A1:1 C420jpeg\n") + CODES * (
        6 + CLIP_WIDTH * CLIP_HEIGHT * 3 // 2)
    if not path.exists() or path.stat().st_size != expected:
        report.progress(f"glass-to-glass: writing the clip {path}")
        write_clip(path)
    return path


# ------------------------------------------------------------------------------------ the shaped link
def netns_problem() -> str | None:
    """Why the shaped run cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, tc)"
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return f"`{tool}` is not installed (iproute2)"
    probe = f"{NETNS}probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(command), capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def remove_link() -> None:
    """Removes the namespace and the veth pair (either may be absent)."""
    _sh("ip", "link", "del", VETH_ROOT, check=False)  # deletes its peer too
    _sh("ip", "netns", "del", NETNS, check=False)


@contextmanager
def shaped_link(rate: str, burst: str, latency: str) -> Iterator[dict[str, Any]]:
    """A namespace for the browser, a veth pair to it, tbf at `rate` on both ends (each direction);
    removed on the way out, whatever happened."""
    remove_link()  # a previous run killed before its clean-up
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    def stop(signum: int, frame: Any) -> None:  # the finally below must run on kill too
        raise KeyboardInterrupt(f"signal {signum}")

    for s in previous:
        signal.signal(s, stop)
    try:
        _sh("ip", "netns", "add", NETNS)
        _sh("ip", "link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_NS)
        _sh("ip", "link", "set", VETH_NS, "netns", NETNS)
        _sh("ip", "addr", "add", f"{ADDR_ROOT}/24", "dev", VETH_ROOT)
        _sh("ip", "link", "set", VETH_ROOT, "up")
        _sh("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{ADDR_NS}/24", "dev", VETH_NS)
        _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", VETH_NS, "up")
        _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        tbf = ["root", "tbf", "rate", rate, "burst", burst, "latency", latency]
        _sh("tc", "qdisc", "add", "dev", VETH_ROOT, *tbf)  # server -> browser
        _sh("ip", "netns", "exec", NETNS, "tc", "qdisc", "add", "dev", VETH_NS, *tbf)  # browser -> server
        yield {"netns": NETNS, "server_address": ADDR_ROOT, "browser_address": ADDR_NS, "rate": rate, "burst": burst,
               "latency": latency, "qdisc": _sh("tc", "qdisc", "show", "dev", VETH_ROOT).stdout.strip()}
    finally:
        remove_link()
        for s, handler in previous.items():
            signal.signal(s, handler)


def veth_bytes() -> dict[str, int]:
    """Bytes through the root side's veth: tx is server -> browser, rx browser -> server (with headers)."""
    base = Path("/sys/class/net") / VETH_ROOT / "statistics"
    return {"down": int((base / "tx_bytes").read_text()), "up": int((base / "rx_bytes").read_text())}


def tbf_drops() -> dict[str, int]:
    """Packets tbf dropped on each end (a full queue)."""
    def dropped(*prefix: str, dev: str) -> int:
        text = _sh(*prefix, "tc", "-s", "qdisc", "show", "dev", dev, check=False).stdout
        for part in text.split("dropped ")[1:]:
            return int(part.split(",")[0])
        return 0

    return {"down": dropped(dev=VETH_ROOT), "up": dropped("ip", "netns", "exec", NETNS, dev=VETH_NS)}


# ---------------------------------------------------------------------------------------- one run
def browser_cpu(driver_pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each Chromium process under the driver, by pid."""
    out = {}
    try:
        children = psutil.Process(driver_pid).children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        try:
            if "chrom" in child.name():
                times = child.cpu_times()
                out[child.pid] = times.user + times.system
        except psutil.Error:
            continue
    return out


def run_transport(transport: str, base_url: str, clip: Path, server_pid: int, args: argparse.Namespace,
                  workdir: Path, shaped: bool) -> dict[str, Any]:
    """One transport: the Node driver in Chromium; the server's CPU and frames and the link's bytes
    sampled when it says its window starts and ends. The raw events and the samples."""
    out = workdir / f"{transport}-{'shaped' if shaped else 'loopback'}.json"
    config = {
        "url": base_url, "transport": transport, "clip": str(clip), "warmup_s": args.warmup,
        "duration_s": args.duration, "out": str(out), "patch": 16,
        "insecure_origin": base_url if shaped else None, "start_timeout_s": args.start_timeout,
    }
    env = {**os.environ, "CHROMIUM_PATH": str(workdir / "chromium-in-netns") if shaped else CHROMIUM}
    process = psutil.Process(server_pid)
    samples: dict[str, dict[str, Any]] = {}
    health_url = f"{base_url}/api/health"

    def sample() -> dict[str, Any]:
        cpu = process.cpu_times()
        at = time.perf_counter()
        health = httpx.get(health_url, timeout=10).json()
        record = {"at": at, "cpu_s": cpu.user + cpu.system, "frames_generated": health["frames_generated"],
                  "users": health["users"], "browser_cpu_s": browser_cpu(node.pid)}
        if shaped:
            record["wire"] = veth_bytes()
            record["tbf_drops"] = tbf_drops()
        return record

    node = subprocess.Popen([NODE, str(DRIVER), json.dumps(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO_ROOT)
    errors: list[str] = []

    def read_stderr() -> None:
        assert node.stderr is not None
        for line in node.stderr:
            errors.append(line.rstrip("\n"))
            if args.verbose:
                report.progress(f"  node: {line.rstrip()}")

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert node.stdout is not None
    limit = args.start_timeout + args.warmup + args.duration + 90
    watchdog = threading.Timer(limit, node.kill)  # a driver that hangs is stopped (and reported below)
    watchdog.start()
    try:
        for line in node.stdout:  # the driver says when its window starts and ends: sample then
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("window") in ("start", "end"):
                samples[message["window"]] = sample()
        node.wait(timeout=60)
    finally:
        watchdog.cancel()
        if node.poll() is None:
            node.kill()
            node.wait()
        reader.join(5)
    if node.returncode != 0 or not out.exists():
        raise RuntimeError(f"glass_to_glass.mjs ({transport}) exited {node.returncode}:\n" + "\n".join(errors[-40:]))
    raw = json.loads(out.read_text())
    raw["server"] = samples
    if args.raw:
        Path(args.raw).mkdir(parents=True, exist_ok=True)
        (Path(args.raw) / out.name).write_text(json.dumps(raw))
    return raw


def _first_at_or_before(times: list[float], t: float) -> int:
    """Index of the last element of sorted `times` that is <= t, or -1."""
    import bisect

    return bisect.bisect_right(times, t) - 1


def _decoded(events: list[list[float]], palette: str) -> list[tuple[float, int | None]]:
    """(time, code or None) of each recorded frame; None where the patch is not flat or near no code."""
    if not events:
        return []
    array = np.asarray(events, dtype=float)
    codes, _ = decode_colours(array[:, 3:6], palette)
    return [(t, int(c) if c >= 0 and spread <= MAX_SPREAD else None)
            for t, c, spread in zip(array[:, 0], codes, array[:, 6])]


def _presented_rate(events: list[list[float]], t0: float, t1: float, video: bool) -> float:
    inside = [e for e in events if t0 <= e[0] < t1]
    if len(inside) < 2:
        return 0.0
    if video:  # presentedFrames between the first and the last callback
        return (inside[-1][2] - inside[0][2]) / ((inside[-1][0] - inside[0][0]) / 1000)
    return len(inside) / ((t1 - t0) / 1000)


RAMP_SECONDS = (2, 5, 10, 15, 20, 30, 40)


def ramp(raw: dict[str, Any]) -> list[dict[str, float]]:
    """Traffic over the run, a sample a second from the first output: (seconds, up and down bytes/s,
    the camera track's quantiser), at RAMP_SECONDS."""
    timeline = raw.get("timeline") or []
    if len(timeline) < 2:
        return []
    start = timeline[0]["t"]
    rows = []
    for a, b in zip(timeline, timeline[1:]):
        dt = (b["t"] - a["t"]) / 1000
        if dt <= 0:
            continue
        up = (b["webrtc_sent"] - a["webrtc_sent"] + b["ws_sent"] - a["ws_sent"]) / dt
        down = (b["webrtc_received"] - a["webrtc_received"] + b["ws_received"] - a["ws_received"]
                + b["http_received"] - a["http_received"]) / dt
        frames = (b["framesEncoded"] or 0) - (a["framesEncoded"] or 0)
        qp = ((b["qpSumSent"] or 0) - (a["qpSumSent"] or 0)) / frames if frames else None
        rows.append({"s": (b["t"] - start) / 1000, "up": up, "down": down, "qp_sent": qp})
    picked = []
    for second in RAMP_SECONDS:
        near = min(rows, key=lambda r: abs(r["s"] - second))
        if abs(near["s"] - second) < 1 and near not in picked:
            picked.append(near)
    return picked


def ramp_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if r["transport"] != "webrtc" or not r.get("ramp"):
            continue
        for point in r["ramp"]:
            rows.append([r["network"], f"{point['s']:.0f}", f"{point['up'] * 8 / 1000:.0f}",
                         f"{point['down'] * 8 / 1000:.0f}", _num(point["qp_sent"])])
    return report.table(["network", "s after the first output", "up kbit/s", "down kbit/s", "camera VP8 qp (0-127)"],
                        rows) if rows else ""


def analyse(raw: dict[str, Any]) -> dict[str, Any]:
    """Latency, fps, bytes and CPU from one transport's raw events and samples."""
    t0, t1 = raw["window"]["start"], raw["window"]["end"]
    seconds = (t1 - t0) / 1000
    # Each event: [now (rendering frame time, ms), detail time, counter, r, g, b, spread].
    inputs = _decoded(raw["input"], "as sent")
    # The output's colours: as sent (MJPEG), or stretched on the way up (WebRTC, see `stretched`):
    # whichever palette reads more of them.
    palette = max(PALETTES, key=lambda name: sum(c is not None for _, c in _decoded(raw["output"], name)))
    outputs = _decoded(raw["output"], palette)
    by_code: dict[int, list[float]] = {}
    for t, code in inputs:
        if code is not None:
            times = by_code.setdefault(code, [])
            if not times or times[-1] != t:
                times.append(t)
    latencies, unmatched, unreadable, repeats = [], 0, 0, 0
    in_window = [(t, c) for t, c in outputs if t0 <= t < t1]
    last_code = None
    shown_codes = []
    for t, code in in_window:
        if code is None:
            unreadable += 1
            continue
        if code == last_code:  # the same frame again (a repeat, not a new output)
            repeats += 1
            continue
        last_code = code
        shown_codes.append(code)
        times = by_code.get(code, [])
        i = _first_at_or_before(times, t)
        if i < 0 or t - times[i] > 1000 * CODES / CLIP_FPS / 2:
            unmatched += 1
            continue
        latencies.append(t - times[i])
    input_in_window = [c for t, c in inputs if t0 <= t < t1]
    # Frames skipped: steps of the code sequence larger than one.
    steps = [(b - a) % CODES for a, b in zip(shown_codes, shown_codes[1:])]
    server = raw.get("server", {})
    start, end = server.get("start"), server.get("end")
    result: dict[str, Any] = {
        "transport": raw["transport"],
        "transport_shown": raw.get("transport_shown"),
        "output_colours": palette,
        "window_s": seconds,
        "outputs_shown": len(shown_codes),
        # Frames the page presented a second: the <video>'s presentedFrames (a callback the busy page
        # missed is still counted), the <img>'s loads.
        "output_fps": _presented_rate(raw["output"], t0, t1, video=raw["transport"] == "webrtc"),
        "input_fps": _presented_rate(raw["input"], t0, t1, video=True),
        # New pictures a second: distinct codes seen (a lower bound where callbacks were missed).
        "new_frames_per_s": len(shown_codes) / seconds if seconds else 0.0,
        "input_unreadable": sum(1 for c in input_in_window if c is None),
        "matched": len(latencies),
        "unmatched": unmatched,
        "unreadable": unreadable,
        "repeats": repeats,
        "mean_code_step": float(np.mean(steps)) if steps else None,
        "latency_ms": report.stats(latencies),
        "latencies_ms": [round(x, 2) for x in latencies],
    }
    b0, b1 = raw["bytes"]["start"], raw["bytes"]["end"]
    up = (b1["webrtc_sent"] - b0["webrtc_sent"]) + (b1["ws_sent"] - b0["ws_sent"])
    down = (b1["webrtc_received"] - b0["webrtc_received"]) + (b1["ws_received"] - b0["ws_received"]) + (
        b1["http_received"] - b0["http_received"])
    result["bytes_per_s"] = {"up": up / seconds, "down": down / seconds, "total": (up + down) / seconds}
    result["bytes_detail"] = {key: (b1[key] - b0[key]) / seconds for key in b0 if isinstance(b0[key], (int, float))}
    result["rtc_stats"] = raw.get("rtc_stats")
    result["ramp"] = ramp(raw)
    if start and end:
        frames = end["frames_generated"] - start["frames_generated"]
        cpu = end["cpu_s"] - start["cpu_s"]
        result["server_frames"] = frames
        result["server_fps"] = frames / (end["at"] - start["at"])
        result["server_cpu_ms_per_frame"] = 1000 * cpu / frames if frames else None
        result["server_cpu_share"] = cpu / (end["at"] - start["at"])  # of one core
        # The browser's processes (those alive at both ends of the window), per output frame presented.
        b0, b1 = start.get("browser_cpu_s", {}), end.get("browser_cpu_s", {})
        browser = sum(b1[pid] - b0[pid] for pid in b1.keys() & b0.keys())
        shown = result["output_fps"] * (end["at"] - start["at"])
        result["browser_cpu_ms_per_frame"] = 1000 * browser / shown if browser and shown else None
        result["browser_cpu_share"] = browser / (end["at"] - start["at"])
        if "wire" in start:
            span = end["at"] - start["at"]
            result["wire_bytes_per_s"] = {d: (end["wire"][d] - start["wire"][d]) / span for d in ("up", "down")}
            result["wire_bytes_per_s"]["total"] = result["wire_bytes_per_s"]["up"] + result["wire_bytes_per_s"]["down"]
            result["tbf_drops"] = {d: end["tbf_drops"][d] - start["tbf_drops"][d] for d in ("up", "down")}
    return result


@contextmanager
def serve(server_args: list[str], trace: Path | None = None, timeout: float = 180) -> Iterator[RunningServer]:
    """`python server/main.py --port 0 ...` (through bench/glass_to_glass_trace.py with `trace`) in a
    process of its own: its CPU time is the server's alone. Stopped with Ctrl-C."""
    entry = [str(TRACER), str(trace)] if trace else [str(REPO_ROOT / "server" / "main.py")]
    proc = subprocess.Popen([sys.executable, *entry, "--port", "0", *server_args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=server_env(), cwd=REPO_ROOT / "tests")
    server = RunningServer(proc)
    try:
        deadline = time.monotonic() + timeout
        while not server.port:
            if proc.poll() is not None:
                server._reader.join(2)
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{server.log[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{server.log[-4000:]}")
            if opened := next((m for line in list(server.lines) if (m := LISTENING.search(line))), None):
                server.port = int(opened.group(1))
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_trace(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The stages of a frame's way, in order: (name, start event, end event) over the joined timestamps.
WEBRTC_STAGES = [
    ("page: shown -> first RTP packet at the server (page's track sampling, Chromium encode, network)", "in", "first"),
    ("RTP: first -> last packet of the frame", "first", "last"),
    ("aiortc jitter buffer: last packet -> frame released", "last", "released"),
    ("aiortc decode (queue + VP8 decode)", "released", "decoded"),
    ("decoded -> session slot (event loop)", "decoded", "slot"),
    ("slot -> worker start", "slot", "work_start"),
    ("worker (to RGB, model, pixels)", "work_start", "work_end"),
    ("worker end -> output track (event loop)", "work_end", "recv"),
    ("aiortc encode (executor + VP8 encode)", "recv", "encoded"),
    ("encoded -> page shows it (send, network, Chromium jitter buffer, decode, render)", "encoded", "out"),
]
MJPEG_STAGES = [
    ("page: shown -> worker start (frame request, page's JPEG, upload, queue)", "in", "work_start"),
    ("worker (decode, model, encode)", "work_start", "work_end"),
    ("worker end -> page shows it (MJPEG part, page decode, render)", "work_end", "out"),
]


def stages(raw: dict[str, Any], events: list[list[Any]], palette: str) -> dict[str, Any]:
    """Where each output frame's time went: the page's events joined with the server's trace by the
    frame's code (and time), on the wall clock. Medians and p95 of each stage, over the frames whose
    whole way was found."""
    import bisect

    origin = raw["time_origin"]
    t0, t1 = raw["window"]["start"], raw["window"]["end"]
    wall = lambda t: (origin + t) / 1000  # noqa: E731  (page ms -> epoch s)
    inputs: dict[int, list[float]] = {}
    for t, code in _decoded(raw["input"], "as sent"):
        if code is not None:
            inputs.setdefault(code, []).append(wall(t))
    outputs = [(wall(t), c) for t, c in _decoded(raw["output"], palette) if c is not None and t0 <= t < t1]

    def code_of(colour: list[float] | None) -> int | None:
        return None if colour is None else decode_colour(*colour, palette=palette)

    ups: dict[int, list[list[Any]]] = {}
    slots: dict[int, list[float]] = {}
    works: dict[int, list[tuple[float, float, int | None]]] = {}
    recvs: dict[int, list[tuple[float, int]]] = {}
    downs: dict[int, list[tuple[float, float, float, int]]] = {}  # code -> (recv, encode start, end, bytes)
    for event in events:
        kind = event[0]
        if kind == "up":
            ups.setdefault(event[1], []).append(event)
        elif kind == "slot":
            slots.setdefault(event[1], []).append(event[2])
        elif kind == "work" and (code := code_of(event[4])) is not None:
            works.setdefault(code, []).append((event[2], event[3], event[1]))
        elif kind == "recv" and (code := code_of(event[3])) is not None:
            recvs.setdefault(event[1], []).append((event[2], code))
        elif kind == "encode":
            pending = recvs.get(event[1])
            if pending:
                t_recv, code = pending.pop(0)
                downs.setdefault(code, []).append((t_recv, event[2], event[3], event[4]))

    def latest(items: list[Any], before: float, key: Any = lambda x: x) -> Any:
        keys = [key(x) for x in items]
        i = bisect.bisect_right(keys, before) - 1
        return items[i] if i >= 0 else None

    webrtc = raw["transport"] == "webrtc"
    table = WEBRTC_STAGES if webrtc else MJPEG_STAGES
    rows: list[dict[str, float]] = []
    last_code = None
    for t_out, code in outputs:
        if code == last_code:
            continue
        last_code = code
        row: dict[str, float] = {"out": t_out}
        if webrtc:
            down = latest(downs.get(code, []), t_out, key=lambda d: d[2])
            if not down:
                continue
            row.update(recv=down[0], encoded=down[2], bytes=down[3])
            work = latest(works.get(code, []), down[0], key=lambda w: w[1])
        else:
            work = latest(works.get(code, []), t_out, key=lambda w: w[1])
        if not work:
            continue
        row.update(work_start=work[0], work_end=work[1])
        if webrtc:
            slot = latest(slots.get(work[2], []), work[0])
            up = latest(ups.get(work[2], []), slot if slot else work[0], key=lambda u: u[6])
            if slot is None or up is None or None in up[2:5]:
                continue
            row.update(slot=slot, first=up[2], last=up[3], released=up[4], decoded=up[6])
            before = row["first"]
        else:
            before = row["work_start"]
        t_in = latest(inputs.get(code, []), before)
        if t_in is None or before - t_in > CODES / CLIP_FPS / 2:
            continue
        row["in"] = t_in
        rows.append(row)
    summary = []
    for name, start, end in table:
        values = [1000 * (r[end] - r[start]) for r in rows]
        figures = report.stats(values)
        summary.append({"stage": name, **{k: figures[k] for k in ("n", "p50", "p95", "mean")}})
    totals = [1000 * (r["out"] - r["in"]) for r in rows]
    groups = {name: [round(1000 * (r[end] - r[start]), 2) for r in rows]
              for name, start, end in CHART_GROUPS["webrtc" if webrtc else "mjpeg"]}
    return {"frames": len(rows), "stages": summary, "total": report.stats(totals), "groups": groups,
            "encoded_bytes_per_frame": float(np.median([r["bytes"] for r in rows])) if webrtc and rows else None}


def stages_table(results: list[dict[str, Any]]) -> str:
    """One table a run: each stage's median and p95 (ms), and their sum against the total."""
    blocks = []
    for r in results:
        s = r.get("stages")
        if not s or not s["frames"]:
            continue
        rows = [[st["stage"], _ms(st["p50"]), _ms(st["p95"]), _ms(st["mean"])] for st in s["stages"]]
        rows.append(["sum of the stages' means / measured total (mean)", "",
                     "", f"{sum(st['mean'] or 0 for st in s['stages']):.1f} / {_ms(s['total']['mean'])}"])
        blocks.append(f"{r['network']}, {r['transport']} ({s['frames']} frames traced, total p50 "
                      f"{_ms(s['total']['p50'])} ms)\n\n"
                      + report.table(["stage", "p50 ms", "p95 ms", "mean ms"], rows, "lrrr"))
    return "\n\n".join(blocks)


def wait_for_no_users(base_url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base_url}/api/health", timeout=10).json()["users"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the server still has a user")
        time.sleep(0.1)


def run_network(network: str, args: argparse.Namespace, clip: Path, workdir: Path) -> list[dict[str, Any]]:
    """Both transports over one network ('loopback' or 'shaped'), on one server."""
    shaped = network == "shaped"
    results = []

    def measure(host: str, link: dict[str, Any] | None) -> None:
        server_args = ["--pipeline", PIPELINE, "--host", host, "--log-level", "info", *args.server_args.split()]
        if shaped:
            server_args += ["--allowed-hosts", host]
        trace = workdir / f"trace-{network}.jsonl" if args.trace else None
        with serve(server_args, trace) as server:
            base_url = f"http://{host}:{server.port}"
            for transport in args.transports:
                report.progress(f"glass-to-glass: {network}, {transport} ...")
                raw = run_transport(transport, base_url, clip, server.proc.pid, args, workdir, shaped)
                result = analyse(raw)
                if trace:
                    time.sleep(1.2)  # the tracer writes every half second
                    result["stages"] = stages(raw, read_trace(trace), result["output_colours"])
                result["network"] = network
                if link:
                    result["link"] = link
                results.append(result)
                report.progress(f"  {summary_line(result)}")
                wait_for_no_users(base_url)

    if not shaped:
        measure("127.0.0.1", None)
        return results
    wrapper = workdir / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {NETNS} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    with shaped_link(args.rate, args.tbf_burst, args.tbf_latency) as link:
        measure(ADDR_ROOT, link)
    return results


def summary_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return (f"{r['transport']}: p50 {_ms(lat['p50'])} ms, p95 {_ms(lat['p95'])} ms, {r['output_fps']:.1f} fps, "
            f"up {r['bytes_per_s']['up'] / 1e3:.0f} kB/s, down {r['bytes_per_s']['down'] / 1e3:.0f} kB/s, "
            f"server CPU {_ms(r.get('server_cpu_ms_per_frame'))} ms/frame, matched {r['matched']}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.0f}"


# ------------------------------------------------------------------------------------- the report
def results_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        lat = r["latency_ms"]
        wire = r.get("wire_bytes_per_s")
        rows.append([
            r["network"], r["transport"], _ms(lat["p50"]), _ms(lat["p95"]), f"{r['output_fps']:.1f}",
            f"{r['new_frames_per_s']:.1f}",
            _kb(r["bytes_per_s"]["up"]), _kb(r["bytes_per_s"]["down"]),
            f"{_kb(wire['up'])} / {_kb(wire['down'])}" if wire else "-",
            _ms(r.get("server_cpu_ms_per_frame")), _ms(r.get("browser_cpu_ms_per_frame")),
            f"{r['matched']}/{r['outputs_shown']}",
        ])
    return report.table(["network", "transport", "latency p50 ms", "p95 ms", "output fps", "new frames/s", "up kB/s",
                         "down kB/s",
                         "wire up / down kB/s", "server CPU ms/frame", "browser CPU ms/frame", "matched/shown"], rows)


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each judged where both of its figures were measured."""
    by = {(r["network"], r["transport"]): r for r in results}
    out = []

    def add(name: str, value: str, met: bool | None) -> None:
        out.append({"target": name, "measured": value, "met": met})

    lw, lm = by.get(("loopback", "webrtc")), by.get(("loopback", "mjpeg"))
    if lw and lm and lw["latency_ms"]["p50"] is not None and lm["latency_ms"]["p50"] is not None:
        diff = lw["latency_ms"]["p50"] - lm["latency_ms"]["p50"]
        add(f"loopback: WebRTC p50 within {DISPLAY_FRAME_MS:.0f} ms of MJPEG's",
            f"{lw['latency_ms']['p50']:.1f} vs {lm['latency_ms']['p50']:.1f} ms ({diff:+.1f})",
            diff <= DISPLAY_FRAME_MS)
    sw, sm = by.get(("shaped", "webrtc")), by.get(("shaped", "mjpeg"))
    if sw:
        add(f"5 Mbit/s: WebRTC at least {SHAPED_MIN_FPS:.0f} fps (frames the page presented)",
            f"{sw['output_fps']:.1f} fps", sw["output_fps"] >= SHAPED_MIN_FPS)
        p95 = sw["latency_ms"]["p95"]
        add(f"5 Mbit/s: WebRTC p95 at most {SHAPED_MAX_P95_MS:.0f} ms", f"{_ms(p95)} ms",
            p95 is not None and p95 <= SHAPED_MAX_P95_MS)

    def bytes_ratio(name: str, w: dict[str, Any], m: dict[str, Any], per_frame: bool) -> None:
        if per_frame:
            if not (w["output_fps"] and m["output_fps"]):
                return
            a, b = w["bytes_per_s"]["total"] / w["output_fps"], m["bytes_per_s"]["total"] / m["output_fps"]
            unit = "kB/frame"
        else:
            a, b, unit = w["bytes_per_s"]["total"], m["bytes_per_s"]["total"], "kB/s"
        if b:
            add(name, f"{a / 1000:.1f} vs {b / 1000:.1f} {unit} ({a / b:.2f})", a / b <= SHAPED_MAX_BYTES_RATIO)

    if sw and sm:  # both directions together, per user
        bytes_ratio("5 Mbit/s: WebRTC bytes/s per user at most 1/4 of MJPEG's", sw, sm, per_frame=False)
        bytes_ratio("5 Mbit/s: WebRTC bytes per output frame at most 1/4 of MJPEG's", sw, sm, per_frame=True)
    if lw and lm:
        bytes_ratio("loopback (both at full rate): WebRTC bytes/s per user at most 1/4 of MJPEG's", lw, lm,
                    per_frame=False)
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    verdict = {True: "met", False: "MISSED", None: "(shown)"}
    return report.table(["target", "measured", "verdict"],
                        [[r["target"], r["measured"], verdict[r["met"]]] for r in rows], "llr")


def webrtc_table(results: list[dict[str, Any]]) -> str:
    """What WebRTC's encoders and decoders did (Chromium's getStats): where its time and bytes go."""
    rows = []
    for r in results:
        s = r.get("rtc_stats")
        if r["transport"] != "webrtc" or not s:
            continue
        out, inn = s.get("outbound", {}), s.get("inbound", {})
        rows.append([
            r["network"],
            f"{out.get('frameWidth', '-')}x{out.get('frameHeight', '-')} {out.get('codec', '')}".strip(),
            _num(out.get("fps")), _kb(out.get("bitrate")), str(out.get("qualityLimitationReason", "-")),
            f"{inn.get('frameWidth', '-')}x{inn.get('frameHeight', '-')} {inn.get('codec', '')}".strip(),
            _num(inn.get("fps")), _kb(inn.get("bitrate")), _ms(inn.get("jitterBufferMs")), _ms(inn.get("decodeMs")),
            _num(inn.get("framesDroppedPerS")), _ms(s.get("rttMs")),
        ])
    if not rows:
        return ""
    return report.table(["network", "camera track sent", "fps", "kB/s", "limited by", "output track received", "fps",
                         "kB/s", "jitter buffer ms", "decode ms", "dropped/s", "RTT ms"], rows)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# The chart's grouping of the traced stages: (group, first event, last event), per transport.
CHART_GROUPS = {
    "webrtc": [("page -> server", "in", "last"), ("aiortc jitter buffer", "last", "released"),
               ("server", "released", "encoded"), ("server -> page", "encoded", "out")],
    "mjpeg": [("page -> server", "in", "work_start"), ("server", "work_start", "work_end"),
              ("server -> page", "work_end", "out")],
}
GROUP_COLOURS = {"page -> server": "#8fb8e8", "aiortc jitter buffer": "#d9534f", "server": "#f0ad4e",
                 "server -> page": "#5cb85c"}


def grouped_stages(r: dict[str, Any]) -> list[tuple[str, float]]:
    """(group, median ms) of a traced run: the medians of each frame's time in each group of CHART_GROUPS."""
    return [(name, float(np.median(r["stages"]["groups"][name]))) for name, _, _ in CHART_GROUPS[r["transport"]]
            if r["stages"]["groups"].get(name)]


def chart(results: list[dict[str, Any]], path: str) -> None:
    """Latency (box: p25-p75, whiskers p5-p95), output fps, traffic per user, and where the time goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['network']}\n{'WebRTC' if r['transport'] == 'webrtc' else 'MJPEG'}" for r in results]
    colours = ["#3b7dd8" if r["transport"] == "webrtc" else "#e0813a" for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax1, ax2), (ax3, ax4) = axes
    data = [r["latencies_ms"] or [np.nan] for r in results]
    box = ax1.boxplot(data, whis=(5, 95), showfliers=False, patch_artist=True)
    ax1.set_xticks(range(1, len(labels) + 1), labels)
    for patch, colour in zip(box["boxes"], colours):
        patch.set_facecolor(colour)
        patch.set_alpha(0.6)
    for i, r in enumerate(results, start=1):
        if r["latency_ms"]["p50"] is not None:
            ax1.annotate(f"p50 {r['latency_ms']['p50']:.0f}\np95 {r['latency_ms']['p95']:.0f}",
                         (i, r["latency_ms"]["p95"]), textcoords="offset points", xytext=(0, 4), ha="center",
                         fontsize=8)
    ax1.set_ylabel("glass-to-glass latency, ms")
    ax1.set_title("Latency (box p25-p75, whiskers p5-p95)")
    ax1.axhline(SHAPED_MAX_P95_MS, color="grey", lw=0.8, ls="--")
    ax1.set_ylim(0, 1.2 * max([r["latency_ms"]["p95"] or 0 for r in results] + [SHAPED_MAX_P95_MS]))
    x = np.arange(len(results))
    ax2.bar(x, [r["output_fps"] for r in results], color=colours, alpha=0.85)
    for i, r in enumerate(results):
        ax2.annotate(f"{r['output_fps']:.1f}", (i, r["output_fps"]), textcoords="offset points", xytext=(0, 3),
                     ha="center", fontsize=8)
    ax2.set_xticks(x, labels)
    ax2.set_ylabel("output frames the page presented per second")
    ax2.axhline(SHAPED_MIN_FPS, color="grey", lw=0.8, ls="--")
    ax2.set_title("Output fps")
    up = np.array([r["bytes_per_s"]["up"] for r in results]) * 8 / 1e6
    down = np.array([r["bytes_per_s"]["down"] for r in results]) * 8 / 1e6
    ax3.bar(x, up, color=colours, alpha=0.45)
    ax3.bar(x, down, bottom=up, color=colours, alpha=0.95)
    for i, (u, d) in enumerate(zip(up, down)):
        ax3.annotate(f"{u:.1f} up + {d:.1f} down", (i, u + d), textcoords="offset points", xytext=(0, 3), ha="center",
                     fontsize=8)
    ax3.set_xticks(x, labels)
    ax3.set_ylabel("Mbit/s per user (light: camera up, dark: output down)")
    ax3.axhline(5, color="grey", lw=0.8, ls="--")
    ax3.set_title("Traffic per user (dashed: 5 Mbit/s)")
    traced = [(label, r) for label, r in zip(labels, results) if r.get("stages") and r["stages"]["frames"]]
    if traced:
        seen: set[str] = set()
        for row, (label, r) in enumerate(traced):
            left = 0.0
            for name, median in grouped_stages(r):
                ax4.barh(row, median, left=left, color=GROUP_COLOURS[name], label=None if name in seen else name)
                if median >= 8:
                    ax4.annotate(f"{median:.0f}", (left + median / 2, row), ha="center", va="center", fontsize=8)
                seen.add(name)
                left += median
            total = r["stages"]["total"]["p50"]
            ax4.plot([total, total], [row - 0.42, row + 0.42], color="black", lw=2)
            ax4.annotate(f"p50 {total:.0f}", (total, row - 0.42), textcoords="offset points", xytext=(3, 0), fontsize=8,
                         va="top")
        ax4.set_yticks(range(len(traced)), [label.replace("\n", " ") for label, _ in traced])
        ax4.invert_yaxis()
        ax4.set_xlabel("ms: each part's median over the frames (black: the median latency)")
        ax4.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, frameon=False)
        ax4.set_title("Where the time goes (server trace)")
    else:
        ax4.axis("off")
    fig.suptitle("Glass to glass: the real page in headless Chromium, the echo model, 512x512")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="loopback only, short windows (the tests)")
    p.add_argument("--networks", default=None, help="loopback,shaped (default both; --quick: loopback)")
    p.add_argument("--transports", default="webrtc,mjpeg")
    p.add_argument("--duration", type=float, default=None, help="measured seconds a transport (default 20; --quick 3)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds after the first output before measuring (default 30: WebRTC's bitrates ramp up "
                        "for about 25 s; --quick 1.5)")
    p.add_argument("--rate", default="5mbit", help="the shaped link's rate, each direction (tc syntax)")
    p.add_argument("--tbf-burst", default="16kb", help="tbf bucket size")
    p.add_argument("--tbf-latency", default="100ms",
                   help="tbf queue: the longest a packet may wait (100 ms holds one JPEG frame at 5 Mbit/s: with "
                        "50 ms MJPEG's frames overflow it and TCP stalls on the losses)")
    p.add_argument("--start-timeout", type=float, default=60, help="seconds for the page's first output frame")
    p.add_argument("--server-args", default="", help="extra server options, one string")
    p.add_argument("--clip", default=None, help="use this y4m clip (default: the benchmark's, made once in the "
                                                "temporary folder)")
    p.add_argument("--json", default=None, help="write everything (every latency included) as JSON")
    p.add_argument("--chart", default=None, help="write a PNG chart (matplotlib)")
    p.add_argument("--no-trace", dest="trace", action="store_false",
                   help="run the plain server, without the trace of each frame's way through it "
                        "(bench/glass_to_glass_trace.py: where the time goes)")
    p.add_argument("--raw", default=None, help="keep the driver's raw events (one JSON a run) in this folder")
    p.add_argument("--verbose", action="store_true", help="show the driver's progress")
    args = p.parse_args(argv)
    args.networks = (args.networks or ("loopback" if args.quick else "loopback,shaped")).split(",")
    args.transports = args.transports.split(",")
    args.duration = args.duration if args.duration is not None else (3.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.5 if args.quick else 30.0)
    bad = set(args.networks) - {"loopback", "shaped"} | set(args.transports) - {"webrtc", "mjpeg"}
    if bad:
        p.error(f"unknown networks or transports: {sorted(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if not Path(CHROMIUM).exists():
        print(f"glass-to-glass: no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
        return 2
    if not (REPO_ROOT / "frontend" / "build" / "index.html").exists():
        print("glass-to-glass: the page is not built (npm --prefix frontend run build)")
        return 2
    skipped: dict[str, str] = {}
    if "shaped" in args.networks and (problem := netns_problem()):
        print(f"glass-to-glass: shaped run skipped: {problem}")
        skipped["shaped"] = problem
        args.networks = [n for n in args.networks if n != "shaped"]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ld-g2g-") as tmp:
        workdir = Path(tmp)
        clip = Path(args.clip) if args.clip else cached_clip()
        for network in args.networks:
            results.extend(run_network(network, args, clip, workdir))
    env = report.environment(load_average=load_at_start, chromium=chromium_version(), node=node_version())
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]  # other work during the run shows here
    settings = {
        "networks": args.networks, "transports": args.transports, "duration s": args.duration, "warmup s": args.warmup,
        "clip": f"{CLIP_WIDTH}x{CLIP_HEIGHT}@{CLIP_FPS} {CODES} frames, noise {SENSOR_NOISE_Y}", "size": "512x512",
        "model": "echo (0 ms)",
        **({"link": f"tbf {args.rate} burst {args.tbf_burst} latency {args.tbf_latency} each way"}
           if "shaped" in args.networks else {}),
    }
    report.print_figure("Glass to glass: latency, fps, traffic, server CPU", env, settings, results_table(results))
    if table := webrtc_table(results):
        report.print_figure("Glass to glass: WebRTC's tracks (Chromium getStats)", env, settings, table)
    if table := ramp_table(results):
        report.print_figure("Glass to glass: WebRTC's traffic as it ramps up", env, settings, table)
    if table := stages_table(results):
        report.print_figure("Glass to glass: where the time goes (server trace)", env, settings, table)
    judged = targets(results)
    if judged and not args.quick:
        report.print_figure("Glass to glass: targets", env, settings, targets_table(judged))
    if args.chart:
        chart(results, args.chart)
    report.finish("glass_to_glass", started, env, args.json, settings=settings, results=results, targets=judged,
                  skipped=skipped)
    return 0


def chromium_version() -> str:
    try:
        return subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"


def node_version() -> str:
    try:
        return subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"


if __name__ == "__main__":
    sys.exit(main())
