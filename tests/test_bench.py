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


# The set-ups test_model_path_quick measures: one per family and kind of conditioning, the accelerators
# spread over them (all 24 at --quick size take about 80 s of CPU here; these about 30 s). SDXL's
# ControlNets (canny, depth, line art) share one: the same stock pipeline and the same path through the
# benchmark, only the annotator differs (its own tests are tests/test_annotators.py), and an SDXL case
# costs about 3 s where an SD 1.5 one costs 1.
QUICK_SETUPS = {
    ("sd15", "canny"): "controlnetHyperSD",
    ("sd15", "depth"): "controlnetDepthFlashSD",
    ("sd15", "qr"): "controlnetLoraSD15QRCode",
    ("sd15", "image prompt"): "IPcompositionHyperSD15",
    ("sd15", "text"): "txt2imgLora",
    ("sd21", "canny"): "controlnetSDTurbo",
    ("sd21", "image"): "img2imgSDXS512",
    ("sdxl", "controlnet"): "controlnetDepthHyperSDXL",
    ("sdxl", "image"): "img2imgSDXL-Lightning",
    ("sdxl", "image prompt"): "IPcompositionHyperSDXL",
    ("sdxl", "text"): "txt2imgLoraSDXL",
}
MODULES = ["img2img", "img2img_sd_turbo", "controlnet_canny", "pix2pix_turbo"]


def conditioning(set_up) -> list[str]:
    """What steers a set-up besides its prompt: its ControlNets (SDXL's as one kind), an image prompt,
    else the frame (or nothing: text to image)."""
    controls = ["controlnet"] if set_up.family == "sdxl" and set_up.controlnets else list(set_up.controlnets)
    kinds = [*controls, *(["image prompt"] if getattr(set_up, "ip_adapter", None) else [])]
    return kinds or ["text" if set_up.text_to_image else "image"]


def test_quick_set_ups_cover_every_family_and_conditioning() -> None:
    from pipelines._setups import ANCHORS

    kinds = {(set_up.family, kind) for set_up in ANCHORS.values() for kind in conditioning(set_up)}
    assert kinds == set(QUICK_SETUPS)
    for (family, kind), name in QUICK_SETUPS.items():
        assert ANCHORS[name].family == family and kind in conditioning(ANCHORS[name]), name


def expected_unet_calls(name: str) -> int:
    """A set-up's UNet calls a frame at its defaults: every step of text to image, int(n * strength) of
    image to image (at least one)."""
    import pipelines
    from pipelines._denoise import img2img_step_count

    module = pipelines.load_module(name)
    params = module.InputParams()
    return params.steps if module.SET_UP.text_to_image else img2img_step_count(params.steps, params.strength)


def test_model_path_quick(tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    names = [*MODULES, *QUICK_SETUPS.values()]
    output = run_bench("model_path.py", "--pipelines", ",".join(names), "--json", str(out))
    for title in ("Model path: seconds per frame", "Model path: where the floor goes",
                  "Model path: what each case runs", "Model path: targets"):
        assert_context(output, title)
    rows = table_rows(output, "Model path: seconds per frame")
    assert [row[0] for row in rows] == names
    span = rf"{NUMBER} \[{NUMBER}-{NUMBER}\]"
    for row in rows:
        ours, naive = row[2].split("/")
        assert ours == naive and int(ours) >= 1, row  # the stock pipeline makes as many UNet calls as ours
        for cell in row[4:]:
            assert re.fullmatch(span, cell), row
    by_name = {row[0]: row for row in rows}
    assert by_name["img2img"][2] == "2/2" and by_name["img2img_sd_turbo"][2] == "1/1"  # 4 steps x 0.5; SD-Turbo 1
    assert all(by_name[name][1] == "256x256" for name in MODULES)
    assert re.fullmatch(span, by_name["controlnet_canny"][3])  # its Canny, timed apart
    assert by_name["pix2pix_turbo"][2] == "1/1" and re.fullmatch(span, by_name["pix2pix_turbo"][3])  # its Scharr edges
    data = json.loads(out.read_text())
    results = {r["pipeline"]: r for r in data["results"]}
    assert list(results) == names
    for result in data["results"]:
        assert result["ours"]["median"] > 0 and result["floor"]["median"] > 0 and result["naive"]["median"] > 0
        assert {"unet", "decoder"} <= set(result["floor_parts"])
    assert "controlnet" in results["controlnet_canny"]["floor_parts"]
    assert set(results["pix2pix_turbo"]["floor_parts"]) == {"encoder", "unet", "decoder"}  # its full VAE, part by part
    assert set(results["pix2pix_turbo"]["annotator_parts"]) == {"scharr_edges"}

    from pipelines._setups import ANCHORS

    cases = {case["pipeline"]: case for case in data["cases"]}
    assert cases["pix2pix_turbo"]["naive"] == "StockPix2PixTurbo" and cases["pix2pix_turbo"]["strength"] is None
    for name in QUICK_SETUPS.values():
        set_up, row, result = ANCHORS[name], by_name[name], results[name]
        calls = expected_unet_calls(name)
        assert row[2] == f"{calls}/{calls}", row
        assert row[1] == ("512x512" if set_up.family == "sdxl" else "256x256"), row  # SDXL: its smallest size
        assert set(result["annotator_parts"]) == set(set_up.controlnets), result["annotator_parts"]
        if set_up.controlnets:  # the annotators' own column, and a ControlNet call a UNet call
            assert re.fullmatch(span, row[3]) and result["annotators"]["median"] > 0, row
            assert result["controlnet_calls"] == calls * len(set_up.controlnets)
        else:
            assert row[3] == "none" and "controlnet" not in result["floor_parts"], row
        assert ("encoder" in result["floor_parts"]) != set_up.text_to_image
        assert ("image_encoder" in result["floor_parts"]) == bool(getattr(set_up, "ip_adapter", None))
        naive = cases[name]["naive"]
        assert naive.startswith("StableDiffusionXL" if set_up.family == "sdxl" else "StableDiffusion"), naive
        assert ("ControlNet" in naive) == bool(set_up.controlnets) and ("Img2Img" in naive) != set_up.text_to_image


def test_model_path_names() -> None:
    from bench.model_path import PIPELINES, case_for, resolve_names, setup_names
    from pipelines._setups import ANCHOR_MODULES

    setups = setup_names()
    assert not set(setups) & set(ANCHOR_MODULES) and len(setups) == len(set(setups))
    assert resolve_names(["all"]) == ([*PIPELINES, *setups], [])
    assert resolve_names(["modules", "controlnet", "img2imgSDTurbo", "pix2pixTurbo", "txt2imgLora", "nope"]) == (
        [*PIPELINES, "txt2imgLora"], ["nope"])  # the anchor's other names of modules are those modules
    turbo = case_for("controlnetSDTurbo")  # 1 step at strength 0.8: diffusers needs 2 steps for the one call
    assert (turbo.steps, turbo.strength, turbo.naive_steps, turbo.kinds) == (1, 0.8, 2, ("canny",))
    assert case_for("txt2imgLoraSDXL").text_to_image and case_for("img2imgSDXS512").own_vae


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
