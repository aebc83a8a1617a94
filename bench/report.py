"""What both benchmarks print with every table: the hardware, the versions and the settings of the run,
plus small helpers for statistics, plain-text tables and JSON output. Imports no torch: the serving
benchmark runs its clients without it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{rev}{' (modified)' if dirty else ''}" if rev else "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


def environment(**extra: Any) -> dict[str, Any]:
    """Hardware and versions. `extra` adds or overrides keys (torch threads, GPU name, device...)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "git": git_revision(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    env.update(extra)
    return env


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def context_lines(env: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    gpu = env.get("gpu") or "none"
    load = env.get("load_average")
    lines = [
        f"hardware: {env['cpu']}; {env['cores']} cores ({env['usable_cores']} usable)"
        + (f", torch threads {env['torch_threads']}" if env.get("torch_threads") is not None else "")
        + (f", {env['memory_gib']} GiB RAM" if env.get("memory_gib") else "")
        + f"; GPU: {gpu}"
        + (f"; load average {load[0]:.2f} at start" if load else ""),
        f"versions: python {env['python']}, torch {env['torch']}, diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}, numpy {env['numpy']}; live-diffusion {env['git']}; {env['os']}",
        "settings: " + ", ".join(f"{key} {_fmt_setting(value)}" for key, value in settings.items()),
    ]
    return lines


def _fmt_setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """Median, min, max, mean and percentiles (linear interpolation) of `values`."""
    if not len(values):
        return {"n": 0, "median": None, "min": None, "max": None, "mean": None, "p50": None, "p95": None, "p99": None}
    array = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "n": int(array.size),
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": float(array.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table (also valid Markdown). `align`: one 'l' or 'r' per column (default: first l)."""
    rows = [[str(cell) for cell in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(row[i]) for row in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":" if a == "r" else ":" + "-" * (w + 1)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line([str(h) for h in headers]), rule, *(line(row) for row in rows)])


def print_figure(title: str, env: dict[str, Any], settings: dict[str, Any], body: str) -> None:
    """One table with its context: title, hardware, versions, settings, then the table."""
    print()
    print(f"## {title}")
    print()
    for line in context_lines(env, settings):
        print(line)
    print()
    print(body)
    sys.stdout.flush()


def write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


def busy_warning(env: dict[str, Any]) -> str | None:
    """A warning when the machine was busy at the start (1-minute load average over half the cores)."""
    load, cores = env.get("load_average"), env.get("usable_cores") or env.get("cores") or 1
    if load and load[0] > 0.5 * cores:
        return (f"warning: the load average was {load[0]:.2f} on {cores} cores at the start: other work was running, "
                "so these figures are noisy (CPU-bound torch threads slow down out of proportion when a core is "
                "taken); measure on a quiet machine")
    return None


def finish(benchmark: str, started: float, env: dict[str, Any], json_path: str | None, **record: Any) -> None:
    """A benchmark's ending: a warning if the machine was busy, the run time, and, with `json_path`, the
    JSON record: `record` with the benchmark's name, the environment and the run time."""
    if warning := busy_warning(env):
        print(f"\n{warning}")
    elapsed = time.perf_counter() - started
    print(f"\n{benchmark}: done in {elapsed:.0f} s")
    if json_path:
        write_json(json_path, {"benchmark": benchmark, "environment": env, **record, "elapsed_s": elapsed})


def progress(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)
