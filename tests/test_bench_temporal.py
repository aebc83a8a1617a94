"""The temporal-consistency benchmark keeps working: `bench/temporal.py --quick` (miniature models,
256x256, a few frames) prints its tables and writes its JSON, with every clip and setting measured,
and never judges its targets on miniature models. Its flicker metric scores what it should on
pictures made here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bench import temporal
from tests.test_bench import assert_context, run_bench, table_rows

CLIPS = ["pan", "object", "noise"]
SETTINGS = ["0", "0.5", "1"]


def test_temporal_quick(tmp_path: Path) -> None:
    out = tmp_path / "temporal.json"
    output = run_bench("temporal.py", "--json", str(out), timeout=90)
    titles = ("Temporal consistency: flicker (warp error)", "Temporal consistency: frame difference",
              "Temporal consistency: cost per frame", "Temporal consistency: targets")
    for title in titles:
        assert_context(output, title)
    assert "random weights" in output and "--real" in output  # says what it measures
    assert [row[1] for row in table_rows(output, titles[0])] == CLIPS
    targets = table_rows(output, titles[3])
    assert len(targets) == 2 * len(CLIPS)
    assert all(row[-1].startswith("not judged") for row in targets), targets

    data = json.loads(out.read_text())
    assert data["benchmark"] == "temporal" and data["settings"]["models"] == "miniature (--quick)"
    assert [(r["pipeline"], r["clip"]) for r in data["results"]] == [("img2img", clip) for clip in CLIPS]
    for result in data["results"]:
        assert result["size"] == 256 and result["frames"] >= 3
        assert math.isfinite(result["input_warp_error"]) and result["input_warp_error"] > 0
        assert 0.5 < result["valid_share"] <= 1.0  # the flow's check keeps most pixels
        assert sorted(result["settings"]) == SETTINGS
        for setting in result["settings"].values():
            assert math.isfinite(setting["warp_error"]) and setting["warp_error"] > 0, setting
            assert len(setting["warp_error_pairs"]) == result["frames"] - 1
            assert math.isfinite(setting["frame_difference"]) and setting["frame_difference"] > 0
            assert len(setting["seconds"]) == result["frames"] and min(setting["seconds"]) > 0
            assert setting["cost"]["n"] == result["frames"] - 1 and setting["cost"]["median"] > 0
            assert math.isfinite(setting["cost_ratio"]) and setting["cost_ratio"] > 0
        assert result["settings"]["0"]["memory_bytes"] == 0  # off: the stream keeps nothing
        assert result["settings"]["1"]["memory_bytes"] > 0
    assert len(data["targets"]) == 2 * len(CLIPS)
    assert all(check["verdict"].startswith("not judged") for check in data["targets"])


def test_warp_error_follows_the_motion() -> None:
    """On the panning clip, a copy of the input scores far below its plain frame difference; flicker
    added to a copy (a colour shift every other frame) scores high."""
    clip = temporal.pan_clip(256, 4)
    temporal.prepare_flows(clip)
    steady = clip.input_warp_error
    assert steady < 0.5 * clip.input_frame_difference, (steady, clip.input_frame_difference)
    flickering = [np.clip(frame.astype(int) + (20 if t % 2 else 0), 0, 255).astype(np.uint8)
                  for t, frame in enumerate(clip.frames)]
    assert temporal.warp_error(flickering, clip.flows)["mean"] > steady + 10
