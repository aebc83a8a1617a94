"""The benchmarks keep working: both scripts run in their --quick mode (miniature models, a few seconds
of serving) and print their tables with numbers, and write their JSON and chart."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.live import REPO_ROOT, server_env

NUMBER = r"\d+\.\d+"


def run_bench(script: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), "--quick", *args],
        capture_output=True, text=True, timeout=timeout, env=server_env(), cwd=REPO_ROOT / "tests",
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def table_rows(output: str, title: str) -> list[list[str]]:
    """The data rows of the Markdown table under the heading `## title`."""
    section = output.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, section
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def assert_context(output: str, title: str) -> None:
    section = output.split(f"## {title}\n", 1)[1]
    assert re.search(r"^hardware: .+cores", section, re.M), section[:500]
    assert re.search(r"^versions: python \S+, torch \S+", section, re.M), section[:500]
    assert re.search(r"^settings: ", section, re.M), section[:500]


def test_model_path_quick(tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    output = run_bench("model_path.py", "--json", str(out))
    for title in ("Model path: seconds per frame", "Model path: where the floor goes", "Model path: targets"):
        assert_context(output, title)
    rows = table_rows(output, "Model path: seconds per frame")
    assert [row[0] for row in rows] == ["img2img", "img2img_sd_turbo", "controlnet_canny"]
    for row in rows:
        assert row[1] == "256x256"
        ours, naive = row[2].split("/")
        assert ours == naive and int(ours) >= 1, row  # the stock pipeline makes as many UNet calls as ours
        for cell in row[3:]:
            assert re.fullmatch(rf"{NUMBER} \[{NUMBER}-{NUMBER}\]", cell), row
    assert rows[0][2] == "2/2" and rows[1][2] == "1/1"  # 4 steps x 0.5; SD-Turbo one step
    data = json.loads(out.read_text())
    assert {r["pipeline"] for r in data["results"]} == {"img2img", "img2img_sd_turbo", "controlnet_canny"}
    for result in data["results"]:
        assert result["ours"]["median"] > 0 and result["floor"]["median"] > 0 and result["naive"]["median"] > 0
        assert {"encoder", "unet", "decoder"} <= set(result["floor_parts"])
    assert "controlnet" in data["results"][2]["floor_parts"]


def test_serving_path_quick(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    args = ["--json", str(out)]
    try:
        import matplotlib  # noqa: F401  (installed by ./test.sh: scripts/setup.sh dev,bench)
        chart = tmp_path / "latency.png"
        args += ["--chart", str(chart)]
    except ImportError:
        chart = None
    output = run_bench("serving_path.py", *args)
    for title in ("Serving path: per configuration", "Serving path: per client",
                  "Serving path: latency trend, burst client", "Serving path: targets"):
        assert_context(output, title)
    rows = table_rows(output, "Serving path: per configuration")
    assert [(row[0], row[1]) for row in rows] == [("0", "1"), ("0", "4"), ("0", "8"), ("50", "1"), ("50", "4"), ("50", "8")]
    for row in rows:
        fps, p50, p95, p99, server_cpu = (float(row[i]) for i in (2, 4, 5, 6, 7))
        assert fps > 0 and 0 < p50 <= p95 <= p99, row
        codec, ratio = float(row[8]), float(row[9])
        assert server_cpu > 0 and codec > 0 and ratio == pytest.approx(server_cpu / codec, abs=0.02), row
        assert int(row[11]) > 0, row  # frames sent
    slow = next(row for row in rows if row[:2] == ["50", "1"])
    assert float(slow[4]) >= 50  # the 50 ms model's latency includes its 50 ms
    assert len(table_rows(output, "Serving path: per client")) == 2 * (1 + 4 + 8)
    burst = table_rows(output, "Serving path: latency trend, burst client")
    assert [row[0] for row in burst] == ["first 1 s", "last 1 s", "whole 3 s"]
    assert all(int(row[2]) > 0 and float(row[4]) > 0 for row in burst), burst
    assert "no readable stamp" not in output and "server sent errors" not in output, output
    data = json.loads(out.read_text())
    assert data["burst"]["whole"]["seen"] > 0
    assert all(r["unreadable"] == 0 for r in data["results"])
    if chart is not None:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script", ["model_path.py", "serving_path.py"])
def test_bench_help(script: str) -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / script), "--help"], capture_output=True,
                          text=True, timeout=60, env=server_env())
    assert done.returncode == 0 and "--quick" in done.stdout and "--json" in done.stdout
