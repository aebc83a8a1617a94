"""The glass-to-glass benchmark (bench/glass_to_glass.py) run short: the real page in headless Chromium,
both transports, on loopback; and its frame-index code. A file of its own so that a test worker runs
it beside tests/test_bench.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.live import REPO_ROOT
from tests.test_bench import assert_context, run_bench, table_rows

# --- glass to glass (bench/glass_to_glass.py): the real page in headless Chromium, both transports ---

def glass_to_glass_missing() -> str | None:
    """What the glass-to-glass benchmark needs and this machine lacks, or None."""
    import shutil

    from bench.glass_to_glass import CHROMIUM

    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if not shutil.which("node"):
        return "no node"
    if not (REPO_ROOT / "frontend" / "node_modules" / "playwright-core").is_dir():
        return "frontend/node_modules has no playwright-core (npm --prefix frontend ci)"
    if not (REPO_ROOT / "frontend" / "build" / "index.html").exists():
        return "the page is not built (npm --prefix frontend run build)"
    return None


def test_glass_to_glass_codes(tmp_path: Path) -> None:
    """Each frame's code survives the colour paths the benchmark reads it through, and the clip's
    patch carries it."""
    import numpy as np

    from bench.glass_to_glass import CODES, code_colour, decode_colour, stretched, write_clip

    for k in range(CODES):
        assert decode_colour(*code_colour(k)) == k
        assert decode_colour(*stretched(code_colour(k)), palette="stretched") == k
        noisy = np.asarray(code_colour(k), dtype=float) + [9, -9, 9]
        assert decode_colour(*noisy) == k
    assert decode_colour(128, 128, 102) is None  # halfway between two codes: none
    clip = write_clip(tmp_path / "clip.y4m", width=160, height=120, frames=3)
    data = clip.read_bytes()
    header, body = data.split(b"\n", 1)
    assert header == b"YUV4MPEG2 W160 H120 F30:1 Ip A1:1 C420jpeg"
    size = 6 + 160 * 120 * 3 // 2
    assert len(body) == 3 * size
    for k in range(3):  # the centre's Y, Cb, Cr, back to RGB (BT.601 limited range), read as k
        frame = np.frombuffer(body, np.uint8, size - 6, k * size + 6)
        y = float(frame[60 * 160 + 80])
        cb, cr = float(frame[160 * 120 + 30 * 80 + 40]), float(frame[160 * 150 + 30 * 80 + 40])
        rgb = [1.164 * (y - 16) + 1.596 * (cr - 128), 1.164 * (y - 16) - 0.392 * (cb - 128) - 0.813 * (cr - 128),
               1.164 * (y - 16) + 2.017 * (cb - 128)]
        assert decode_colour(*rgb) == k, rgb


def check_glass_to_glass(data: dict, network: str) -> None:
    """Both transports ran over `network`, frames were matched by their index, and every figure is there."""
    results = {(r["network"], r["transport"]): r for r in data["results"]}
    assert set(results) == {(network, "webrtc"), (network, "mjpeg")}, list(results)
    for (_, transport), r in results.items():
        what = f"{network} {transport}"
        assert r["transport_shown"] == {"webrtc": "WebRTC", "mjpeg": "MJPEG"}[transport], what
        assert r["matched"] >= 3 and r["matched"] >= 0.5 * r["outputs_shown"], (what, r["matched"], r["outputs_shown"])
        latency = r["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] < 5000, (what, latency)
        assert r["output_fps"] > 1 and r["input_fps"] > 5, what
        assert r["bytes_per_s"]["up"] > 0 and r["bytes_per_s"]["down"] > 0, (what, r["bytes_per_s"])
        assert r["server_frames"] > 0 and r["server_cpu_ms_per_frame"] > 0, what
        stages = r["stages"]
        assert stages["frames"] > 0, what
        total = sum(stage["mean"] for stage in stages["stages"])
        assert total == pytest.approx(stages["total"]["mean"], rel=1e-6), what  # the stages add up to the latency
    webrtc, mjpeg = results[(network, "webrtc")], results[(network, "mjpeg")]
    assert webrtc["bytes_detail"]["webrtc_sent"] > 0 and webrtc["bytes_detail"]["webrtc_received"] > 0
    assert webrtc["rtc_stats"]["outbound"]["frameWidth"] == 512 and webrtc["rtc_stats"]["inbound"]["frameWidth"] == 512
    assert mjpeg["bytes_detail"]["ws_sent"] > 0 and mjpeg["bytes_detail"]["http_received"] > 0
    assert mjpeg["bytes_detail"]["webrtc_sent"] == 0
    # A JPEG a frame each way: MJPEG's traffic per frame is a camera-like 512x512 JPEG (tens of kB) each way.
    assert 5_000 < mjpeg["bytes_per_s"]["up"] / mjpeg["output_fps"] < 300_000


def test_glass_to_glass_quick(tmp_path: Path) -> None:
    if problem := glass_to_glass_missing():
        print(f"skipped: {problem}")
        pytest.skip(problem)
    out = tmp_path / "g2g.json"
    args = ["--json", str(out)]
    try:
        import matplotlib  # noqa: F401
        chart = tmp_path / "g2g.png"
        args += ["--chart", str(chart)]
    except ImportError:
        chart = None
    output = run_bench("glass_to_glass.py", *args, timeout=180)
    title = "Glass to glass: latency, fps, traffic, server CPU"
    assert_context(output, title)
    assert [row[:2] for row in table_rows(output, title)] == [["loopback", "webrtc"], ["loopback", "mjpeg"]]
    assert "Glass to glass: where the time goes (server trace)" in output
    check_glass_to_glass(json.loads(out.read_text()), "loopback")
    if chart is not None:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_glass_to_glass_shaped(tmp_path: Path) -> None:
    """The 5 Mbit/s run, short: the browser in a network namespace behind a tbf-shaped veth pair. About
    30 s, so only on request (LD_BENCH_SHAPED=1); needs root and `ip netns`."""
    import os

    from bench.glass_to_glass import NETNS, VETH_ROOT, netns_problem

    if problem := glass_to_glass_missing() or netns_problem():
        print(f"skipped: {problem}")
        pytest.skip(problem)
    if os.environ.get("LD_BENCH_SHAPED") != "1":
        reason = "the shaped run takes about 30 s: run it with LD_BENCH_SHAPED=1"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    out = tmp_path / "g2g.json"
    run_bench("glass_to_glass.py", "--networks", "shaped", "--json", str(out), timeout=240)
    data = json.loads(out.read_text())
    check_glass_to_glass(data, "shaped")
    for r in data["results"]:
        assert r["wire_bytes_per_s"]["up"] > 0 and r["wire_bytes_per_s"]["down"] > 0, r["transport"]
        assert r["link"]["rate"] == "5mbit"
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert VETH_ROOT not in links and NETNS not in namespaces  # removed after the run
