"""The soak benchmark's short run (`bench/soak.py --quick`: 4 users for 10 s, then 50 sessions opened and
closed in every order) against the real server: it keeps working, and the server keeps its properties:
each user gets only its own frames, sessions end, fds and threads come back. Properties only, never
timing: it must hold on a loaded 2-core machine. About 20 to 30 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.live import REPO_ROOT, server_env

SOAK = REPO_ROOT / "bench" / "soak.py"


def test_soak_quick(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SOAK), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=180, env=server_env(), cwd=REPO_ROOT / "tests",
    )
    report = f"soak.py exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, report
    for title in ("Soak: steady load, first and last window", "Soak: churn, sessions opened and closed", "Soak: goals"):
        assert f"## {title}\n" in done.stdout, report
    assert "MISSED" not in done.stdout and "soak: all " in done.stdout, report
    data = json.loads(out.read_text())
    assert data["passed"] is True

    steady = data["steady"]
    assert steady["users"] == 4 and steady["users_during"] == 4 and steady["users_after"] == 0, steady
    assert steady["frames_checked"] > 0 and steady["frames_sent"] > 0
    # Each user receives only its own frames: none stamped with another user's marker, none unreadable,
    # none that is not among the frames it sent last; and no user stalls.
    assert (steady["foreign"], steady["unreadable"], steady["unknown"]) == (0, 0, 0), steady["foreign_markers"]
    assert steady["errors"] == []
    first, last = steady["first"], steady["last"]
    assert first["samples"] > 0 and last["samples"] > 0
    assert min(last["outputs_per_user"]) > 0 and min(first["outputs_per_user"]) > 0
    assert last["fds"]["max"] <= first["fds"]["max"]
    assert last["threads"]["max"] <= max(first["threads"]["max"], steady["thread_allowance"]["limit"])

    churn = data["churn"]
    assert churn["cycles"] == 50 and churn["failed"] == 0, churn["problems"]
    assert churn["error_count"] == 0, churn["errors"]
    assert {mode: m["failed"] for mode, m in churn["by_mode"].items()} == {
        "stream-first": 0, "socket-first": 0, "abort": 0, "crash": 0}
    assert all(m["cycles"] >= 12 for m in churn["by_mode"].values())
    before, after = churn["before"], churn["after"]
    assert before["users"] == after["users"] == 0
    assert after["fds"] <= before["fds"] and after["threads"] <= before["threads"], (before, after)
    assert churn["settled_after_s"] is not None

    assert data["server_log"]["problems"] == []
    assert data["server_log"]["connected"] == data["server_log"]["closed"]  # every session logged its end
    judged = [goal for goal in data["goals"] if goal["judged"]]
    assert judged and all(goal["met"] for goal in judged), data["goals"]
    memory = next(goal for goal in data["goals"] if "memory" in goal["goal"])
    assert not memory["judged"]  # 10 s say nothing about a leak: judged in the full run only


def test_soak_help() -> None:
    done = subprocess.run([sys.executable, str(SOAK), "--help"], capture_output=True, text=True, timeout=60,
                          env=server_env())
    assert done.returncode == 0
    for option in ("--quick", "--json", "--users", "--duration", "--cycles", "--server-args", "--url", "--pid"):
        assert option in done.stdout, option
