"""The GPU check keeps working: `bench/gpu_check.sh --quick` (miniature models, small sizes and counts)
runs every section to the end, as a user would run it, and writes its JSON and Markdown with numbers
in every section and a row per pipeline and per set-up it measures; and the process that watches the
sections records a section that overruns its time, a process that dies, and one that cannot start,
and goes on."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pipelines
from bench import gpu_check, gpu_check_sections
from bench.live import REPO_ROOT, server_env
from pipelines._denoise import img2img_step_count

SECTIONS = ["model_path", "batching", "temporal", "serving", "torch_compile"]


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_gpu_check_quick(tmp_path: Path) -> None:
    out = tmp_path / "check"
    started = time.monotonic()
    done = subprocess.run(
        [str(REPO_ROOT / "bench" / "gpu_check.sh"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=280, env=server_env(OMP_NUM_THREADS="1"), cwd=tmp_path,
    )
    took = time.monotonic() - started
    output = f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert done.returncode == 0, f"exit {done.returncode} after {took:.0f} s:\n{output}"

    data = json.loads((out / "gpu_check.json").read_text())
    assert data["benchmark"] == "gpu_check" and data["quick"] and data["complete"]
    device = data["environment"]["device"]
    assert device["name"] and device["dtype"] in ("float32", "bfloat16", "float16") and device["torch"]
    assert data["environment"]["diffusers"] != "-" and not data["errors"]
    sections = data["sections"]
    assert list(sections) == SECTIONS
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section)
        assert 0 < section["elapsed_s"] <= section["budget_s"] + gpu_check.QUICK_GRACE, (name, section)

    model_path = sections["model_path"]["results"]
    measured = [*pipelines.available(), *gpu_check_sections.SETUPS]  # every module of --list-pipelines, and set-ups
    assert sorted(r["pipeline"] for r in model_path) == sorted(measured)
    assert [r["pipeline"] for r in model_path] == gpu_check_sections.model_path_names()  # the most used first
    for result in model_path:
        assert positive(result["fps"]) and positive(result["seconds"]["median"]) and result["unet_calls"] >= 1, result
        assert result["fps"] == pytest.approx(1 / result["seconds"]["median"])
    calls = {r["pipeline"]: r["unet_calls"] for r in model_path}
    assert calls["img2img_sd_turbo"] == 1 and calls["pix2pix_turbo"] == 1
    for name in gpu_check_sections.SETUPS:  # a UNet call a step run: int(steps * strength), at least one
        params = pipelines.load_module(name).InputParams()
        assert calls[name] == img2img_step_count(params.steps, params.strength), name

    batching = sections["batching"]["results"]
    assert [r["users"] for r in batching] == [1, 2]
    for result in batching:
        assert positive(result["fps_total"]) and positive(result["fps_per_user"]), result
        assert result["fps_total"] == pytest.approx(result["users"] * result["fps_per_user"])

    temporal = sections["temporal"]
    for key in ("0", "1"):
        assert positive(temporal["settings"][key]["seconds"]["median"]) and positive(temporal["settings"][key]["fps"])
    assert temporal["settings"]["0"]["memory_bytes"] == 0 and positive(temporal["memory_bytes"])
    assert positive(temporal["cost_ratio"])
    assert temporal["cuda_peak_delta_bytes"] is None and "no GPU" in temporal["note"]  # a CPU here

    serving = sections["serving"]
    assert serving["model"].startswith("real:"), serving  # the full-size pipeline module's server started
    assert [r["users"] for r in serving["results"]] == [1, 2]
    for result in serving["results"]:
        assert positive(result["fps_total"]) and positive(result["latency_ms"]["p50"]), result
        assert result["camera_fps"] == 30 and result["unreadable"] == 0 and not result["errors"], result

    compiled = sections["torch_compile"]
    assert positive(compiled["off"]["fps"]) and positive(compiled["on"]["fps"]) and positive(compiled["speedup"])
    assert len(compiled["on"]["first_frames_s"]) == 3 and isinstance(compiled["on"]["compile_s"], float)

    markdown = (out / "gpu_check.md").read_text()
    assert markdown in done.stdout
    assert f"device: {device['name']}" in markdown and f"dtype {device['dtype']}" in markdown
    table = markdown.split("## Model path\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")][2:]
    assert sorted(row.split("|")[1].strip() for row in rows) == sorted(measured)
    for title in ("## Sections", "## Batching", "## Temporal consistency", "## Serving path", "## torch.compile"):
        assert title in markdown
    print(f"gpu_check --quick took {took:.1f} s")


FAKE_CHILD = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path

    args = sys.argv[1:]
    out, sections = Path(args[args.index("--out") + 1]), args[args.index("--sections") + 1].split(",")
    mode = Path(args[0]).read_text().strip()

    def say(*words):
        print("@gpu_check " + " ".join(words), flush=True)

    def save(name, record):
        (out / "sections").mkdir(parents=True, exist_ok=True)
        (out / "sections" / f"{name}.json").write_text(json.dumps(record))

    if mode == "no start":
        print("ImportError: no torch here", file=sys.stderr)
        sys.exit(1)
    say("device", json.dumps({"device": "cuda", "name": "Fake GPU", "dtype": "float16", "torch": "0"}))
    for name in sections:
        if name == "model_path":  # measures one figure, then hangs
            say("start", name, "1")
            save(name, {"status": "running", "budget_s": 1, "skipped": [], "results": [
                {"pipeline": "img2img", "size": 512, "unet_calls": 2, "fps": 25.0, "warmup_s": 1.0, "build_s": 5.0,
                 "seconds": {"n": 3, "median": 0.04, "min": 0.039, "max": 0.041}, "peak_memory_bytes": 4e9}]})
            time.sleep(120)
        elif name == "batching":  # dies
            say("start", name, "5")
            print("CUDA error: an illegal memory access was encountered", file=sys.stderr, flush=True)
            sys.exit(3)
        else:
            say("start", name, "5")
            save(name, {"status": "ok", "budget_s": 5, "elapsed_s": 0.1, "skipped": []})
            say("end", name)
''')


def run_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> tuple[int, dict]:
    script, behaviour = tmp_path / "fake_child.py", tmp_path / "mode.txt"
    script.write_text(FAKE_CHILD)
    behaviour.write_text(mode)
    monkeypatch.setattr(gpu_check, "child_command", lambda run, sections: [
        sys.executable, str(script), str(behaviour), "--out", str(run.out), "--sections", ",".join(sections)])
    monkeypatch.setattr(gpu_check, "QUICK_GRACE", 0.5)
    out = tmp_path / "out"
    code = gpu_check.main(["--quick", "--out", str(out), "--budget", "60"])
    return code, json.loads((out / "gpu_check.json").read_text())


def test_supervisor_records_timeouts_and_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    code, data = run_fake(tmp_path, monkeypatch, "sections")
    assert time.monotonic() - started < 30  # the hanging section was killed, not waited for
    assert code == 1  # a section crashed
    sections = data["sections"]
    assert sections["model_path"]["status"] == "timed out" and "killed after" in sections["model_path"]["error"]
    assert sections["model_path"]["results"][0]["fps"] == 25.0  # what it measured before is kept
    assert sections["batching"]["status"] == "crashed" and "illegal memory access" in sections["batching"]["error"]
    assert [sections[name]["status"] for name in ("temporal", "serving", "torch_compile")] == ["ok"] * 3
    assert data["environment"]["device"]["name"] == "Fake GPU" and data["complete"]
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| img2img " in markdown and "timed out" in markdown and "crashed" in markdown


def test_supervisor_records_a_process_that_cannot_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, data = run_fake(tmp_path, monkeypatch, "no start")
    assert code == 1 and "no torch here" in data["errors"][0]
    assert {section["status"] for section in data["sections"].values()} == {"not run"}
