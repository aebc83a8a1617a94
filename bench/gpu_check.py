"""GPU check: one command that measures what a GPU host does with this project, within a fixed time,
and writes it as JSON and a Markdown table. Made for the day a GPU is lent: no hub needed (full-size
architectures with random weights, bench/full_size.py), float16 (`--dtype auto` on a GPU).

    bench/gpu_check.sh                        # a GPU host: under 8 minutes (a 450 s budget, --budget)
    bench/gpu_check.sh --quick                # miniature models (--tiny), on any machine: under a minute
    bench/gpu_check.sh --sections model_path,batching --out /tmp/check

What it measures, in this order (each a "section"; docs/benchmarks.md#gpu-check):

- model_path: frames per second of each pipeline's own `predict` (what the server's worker calls),
  every pipeline of `server/main.py --list-pipelines` at its default size, SDXL also at 1024 (its
  default is 768), and model set-ups, one per accelerator and family (`SETUPS` in
  bench/gpu_check_sections.py), at their default sizes, a frame or two each, the most used first, as
  far as the section's time goes; the UNet calls a frame and the peak GPU memory;
- batching: img2img at 512x512, 1, 2, 4 and 8 users' frames as one batch (`predict_batch`): frames
  per second in total and per user;
- temporal: img2img at 512x512, seconds a frame at temporal_consistency 0 and 1 (bench/temporal.py's
  streams) and what a stream's memory costs: `StreamMemory.nbytes()` and the GPU's
  `max_memory_allocated` over a frame, at 1 against 0;
- serving: the real server (`server/main.py --pipeline bench.full_size_pipeline`: img2img with
  full-size random weights) with 1, 2, 4 and 8 users whose cameras give 30 frames a second
  (bench/serving_path.py's clients): fps per user, latency; if that server cannot start, the echo
  model with the model time measured by model_path, said so in the output;
- torch_compile: img2img at 512x512 built without and with `--torch-compile`: the compile (the first
  frame's time) apart from the steady frames per second.

Time. The whole check has a budget (`--budget`, 450 s; under 8 minutes with the start-up) and each
section a cap (`CAPS`): a section gets at most its cap and never more than what is left, stops
measuring (and says what it skipped) when its time runs short, and is not started when less than its
minimum is left. The sections run in one child process, watched from this one: a section that
overruns its time by `GRACE` seconds, or a process that dies (a CUDA error, out of memory), is killed
and recorded as such, with what it had measured, and a new child goes on with the next section.
After every section the JSON and the Markdown are written again, so an interrupted run keeps
what it measured. Nothing here waits without a time limit.

Estimated on an H100 (float16): start-up 15-30 s (imports, CUDA); model_path 70-130 s for the modules
(building the random models, a few seconds each, SDXL's about 20; frames of 15-150 ms), and the set-ups
in what is left of its 150 s (about 10 s each for SD 1.5, 25 for SDXL: the later SDXL ones are
skipped for time, and said so); batching and temporal
10-25 s each; serving 40-60 s (the server's start-up, 5 s per number of users); torch_compile
90-200 s (a UNet compiles in 1-3 minutes). About 4-7 minutes in all; the caps keep it within the
budget whatever happens, torch_compile taking what is left (it runs last for that reason).

`--quick`: the same sections with the miniature models (`--tiny`), small sizes and counts, and
torch.compile with the "eager" backend (dynamo traces the models, no code generation: inductor takes
minutes on a small CPU), so that the code path is tested in about half a minute (tests/test_gpu_check.py);
its figures mean nothing. On a CPU the serving section's server starts with the child process, so
that its start-up runs beside the other sections.

Output, in `--out` (default bench/results/gpu_check-<date>-<time>/): gpu_check.json and gpu_check.md
(the Markdown is also printed). JSON layout:

    {"benchmark": "gpu_check", "quick": bool, "budget_s": 450, "elapsed_s": ..., "complete": bool,
     "environment": {... report.environment(): CPU, versions, git ...,
                     "device": {"device": "cuda", "name": "NVIDIA H100 80GB HBM3", "dtype": "float16",
                                "torch": ..., "cuda": ..., "diffusers": ..., "memory_gib": ..., ...}},
     "sections": {name: {"status": "ok" | "partial" | "failed" | "timed out" | "crashed" | "skipped" | "not run",
                         "budget_s": ..., "elapsed_s": ..., "error": str | null,
                         "skipped": [{"what": ..., "why": ...}], ...the section's own figures...}},
     "errors": [...]}   # a child process that could not start, or died between sections

Exit status: 0 when no section failed or crashed (skipped for time or timed out is not a failure:
the output says what did not fit), 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/gpu_check.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from bench import report  # noqa: E402  (no torch: this process only watches)

SECTIONS = ("model_path", "batching", "temporal", "serving", "torch_compile")

# Seconds. "startup": from starting a child process to its first section (imports, CUDA); a section's
# cap is the most it may take; its minimum, the least worth starting it with.
CAPS = {"startup": 120, "model_path": 150, "batching": 45, "temporal": 45, "serving": 90, "torch_compile": 240}
MINIMUMS = {"model_path": 30, "batching": 15, "temporal": 15, "serving": 30, "torch_compile": 60}
QUICK_CAPS = {"startup": 120, "model_path": 90, "batching": 60, "temporal": 60, "serving": 90, "torch_compile": 90}
QUICK_MINIMUMS = {name: 5 for name in SECTIONS}
BUDGET = 450.0  # the whole check: under 8 minutes with the start-up and the writing
QUICK_BUDGET = 240.0  # tests/test_gpu_check.py waits 280 s; pytest's own limit is 300
GRACE = 15.0  # seconds a section may overrun its time before it is killed
QUICK_GRACE = 10.0

CONTROL = "@gpu_check "  # the child's lines to this process, on its stdout


def caps(quick: bool) -> dict[str, float]:
    return QUICK_CAPS if quick else CAPS


def minimums(quick: bool) -> dict[str, float]:
    return QUICK_MINIMUMS if quick else MINIMUMS


# --- the watching process ------------------------------------------------------------------------------


class Run:
    """The whole check's record, written to the output folder after every change."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.started = time.time()
        self.deadline = self.started + args.budget
        self.data: dict[str, Any] = {
            "benchmark": "gpu_check",
            "quick": args.quick,
            "budget_s": args.budget,
            "caps_s": caps(args.quick),
            "command": " ".join(["bench/gpu_check.sh", *args.argv]),
            "environment": report.environment(),
            "settings": {"device": args.device, "dtype": args.dtype,
                         "models": "miniature (--quick)" if args.quick else "full-size, random weights"},
            "sections": {name: {"status": "not run", "reason": "not in --sections"} for name in SECTIONS
                         if name not in args.sections},
            "errors": [],
            "complete": False,
        }
        for name in args.sections:
            self.data["sections"][name] = {"status": "pending"}
        self.data["sections"] = {name: self.data["sections"][name] for name in SECTIONS}

    def left(self) -> float:
        return self.deadline - time.time()

    def section_file(self, name: str) -> Path:
        return self.out / "sections" / f"{name}.json"

    def take(self, name: str, **override: Any) -> None:
        """The section's record as the child last wrote it, with `override` on top."""
        record: dict[str, Any] = {}
        path = self.section_file(name)
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                record = {"error": f"its record could not be read: {error}"}
        record.update(override)
        record.setdefault("status", "failed")
        self.data["sections"][name] = record
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = time.time() - self.started
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=2, default=str) + "\n"),
                           ("gpu_check.md", markdown(self.data))):
            path = self.out / name
            temporary = path.with_suffix(path.suffix + ".tmp")
            temporary.write_text(text)
            os.replace(temporary, path)


def child_command(run: Run, sections: list[str]) -> list[str]:
    """The command of a child process that runs `sections` (bench/gpu_check_sections.py)."""
    args = run.args
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--out", str(run.out),
            "--sections", ",".join(sections), "--deadline", f"{run.deadline:.3f}",
            "--device", args.device, "--dtype", args.dtype] + (["--quick"] if args.quick else [])


class Child:
    """One child process running sections in order, and the lines it says what it does in."""

    def __init__(self, run: Run, sections: list[str]) -> None:
        args = run.args
        command = child_command(run, sections)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        if args.quick:
            env.setdefault("OMP_NUM_THREADS", "1")
        # Its own process group: killed with the server it starts.
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=REPO_ROOT, start_new_session=True)
        self.events: queue.Queue[tuple[str, list[str]]] = queue.Queue()
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.readers = [threading.Thread(target=self._stdout, daemon=True),
                        threading.Thread(target=self._stderr, daemon=True)]
        for reader in self.readers:
            reader.start()

    def _stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(CONTROL):
                kind, _, rest = line[len(CONTROL):].rstrip("\n").partition(" ")
                self.events.put((kind, rest.split(" ", 1) if rest else []))
            else:
                sys.stderr.write(line)
                self.tail.append(line.rstrip("\n"))

    def _stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            sys.stderr.write(line)
            self.tail.append(line.rstrip("\n"))

    def kill(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def finish(self) -> None:
        """After the process has ended: the rest of its output."""
        for reader in self.readers:
            reader.join(5)

    def last_lines(self, count: int = 12) -> str:
        return "\n".join(list(self.tail)[-count:])


def supervise(run: Run) -> None:
    """Run the sections in child processes, restarting after a section that had to be killed or that
    killed its process, until all are done or the time is spent."""
    args = run.args
    grace = QUICK_GRACE if args.quick else GRACE
    remaining = list(args.sections)
    run.write()
    while remaining:
        if run.left() < min(minimums(args.quick)[name] for name in remaining):
            for name in remaining:
                run.take(name, status="skipped", reason=f"no time left in the check's budget ({args.budget:g} s)")
            break
        report.progress(f"gpu_check: starting a process for {', '.join(remaining)} ({run.left():.0f} s left)")
        child = Child(run, remaining)
        state: dict[str, Any] = {"current": None, "started": time.time(), "started_any": False,
                                 "limit": min(time.time() + caps(args.quick)["startup"], run.deadline + grace)}

        def handle(kind: str, words: list[str]) -> None:
            now = time.time()
            if kind == "device":
                run.data["environment"]["device"] = json.loads(" ".join(words))
                run.write()
            elif kind == "start":
                budget = float(words[1])
                state.update(current=words[0], started=now, started_any=True,
                             limit=min(now + budget + grace, run.deadline + grace))
                run.data["sections"][words[0]] = {"status": "running", "budget_s": budget}
                report.progress(f"gpu_check: {words[0]} ({budget:.0f} s at most)")
                run.write()
            elif kind == "end":
                run.take(words[0])
                if words[0] in remaining:
                    remaining.remove(words[0])
                # The child's own work until its next section (freeing memory, the next budget) is short.
                state.update(current=None, limit=min(now + caps(args.quick)["startup"], run.deadline + grace))

        why = ""
        try:
            while True:
                try:
                    handle(*child.events.get(timeout=0.1))
                    continue
                except queue.Empty:
                    pass
                if child.proc.poll() is not None:
                    child.finish()
                    while not child.events.empty():  # what it said just before it ended
                        handle(*child.events.get())
                    code = child.proc.returncode
                    if code != 0 or remaining and state["current"] is None:
                        why = f"the process ended with exit code {code}"
                    break
                if time.time() > state["limit"]:
                    child.kill()
                    child.finish()
                    why = "timed out"
                    break
        except BaseException:  # Ctrl-C, or a bug here: the child (in its own process group) must not outlive us
            child.kill()
            raise
        current, started_any = state["current"], state["started_any"]
        if not why:
            continue
        tail = child.last_lines()
        if current is not None:
            elapsed = time.time() - state["started"]
            budget = run.data["sections"].get(current, {}).get("budget_s") or 0.0
            if why == "timed out":
                run.take(current, status="timed out", elapsed_s=elapsed, budget_s=budget,
                         error=f"killed after {elapsed:.0f} s (its time: {budget:.0f} s + {grace:g} s of grace): "
                               "it did not finish in its time; what it measured before is kept")
            else:
                last = next((line for line in reversed(tail.splitlines()) if line.strip()), "no output")
                run.take(current, status="crashed", elapsed_s=elapsed, budget_s=budget,
                         error=f"{why} during this section: {last.strip()[:300]}\nits last output:\n{tail}")
            remaining.remove(current)
        elif not started_any:
            # The child never got to a section: it would fail the same way again.
            failure = "did not start in time" if why == "timed out" else "failed"
            run.data["errors"].append(f"the check's process {failure} ({why}):\n{tail}")
            for name in remaining:
                run.take(name, status="not run", reason="the check's process could not start (see errors)")
            remaining = []
        else:
            run.data["errors"].append(f"between sections: {why}:\n{tail}")


# --- report -------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 1) -> str:
    if value is None or isinstance(value, str):
        return "-" if value is None else value
    return f"{value:.{digits}f}"


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _gib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _ms(stats: dict[str, Any] | None, key: str = "median") -> str:
    return "-" if not stats or stats.get(key) is None else f"{stats[key] * 1000:.1f}"


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    device = env.get("device") or {}
    lines = [f"# GPU check{' (--quick: miniature models, figures mean nothing)' if data['quick'] else ''}", ""]
    lines.append(f"- device: {device.get('name', '-')} ({device.get('device', '-')}), dtype {device.get('dtype', '-')}"
                 + (f", {device['memory_gib']:.0f} GiB" if device.get("memory_gib") else ""))
    lines.append(f"- versions: torch {device.get('torch', env.get('torch'))}"
                 + (f" (CUDA {device['cuda']})" if device.get("cuda") else "")
                 + f", diffusers {device.get('diffusers', env.get('diffusers'))}, "
                 f"transformers {env.get('transformers')}, python {env.get('python')}; live-diffusion {env.get('git')}")
    lines.append(f"- host: {env.get('cpu')}, {env.get('cores')} cores, {env.get('memory_gib')} GiB RAM; "
                 f"load average {env.get('load_average', ['-'])[0] if env.get('load_average') else '-'} at the start")
    lines.append(f"- models: {data['settings']['models']}; started {env.get('date')}; "
                 f"{data.get('elapsed_s', 0):.0f} s of a {data['budget_s']:g} s budget"
                 + ("" if data.get("complete") else " (incomplete: still running or interrupted)"))
    lines.append(f"- command: `{data['command']}`")
    lines += ["", "## Sections", ""]
    rows = []
    for name, section in data["sections"].items():
        notes = [section.get("reason") or "", *(f"skipped {s['what']}: {s['why']}" for s in section.get("skipped", [])),
                 *(f"{f['what']} failed: {f['error'][:200]}" for f in section.get("failures", []))]
        if section.get("error"):
            notes.append("error: " + section["error"].strip().splitlines()[0][:200])
        if section.get("note"):
            notes.append(section["note"])
        rows.append([name, section.get("status", "-"), _num(section.get("elapsed_s"), 0),
                     _num(section.get("budget_s"), 0), "; ".join(n for n in notes if n) or "-"])
    lines.append(report.table(["section", "status", "took s", "budget s", "notes"], rows, "llrrl"))
    for error in data.get("errors", []):
        lines += ["", f"error: {error.splitlines()[0]}"]
    parts = (("model_path", "Model path", _model_path_md), ("batching", "Batching", _batching_md),
             ("temporal", "Temporal consistency", _temporal_md), ("serving", "Serving path", _serving_md),
             ("torch_compile", "torch.compile", _compile_md))
    for key, title, render in parts:
        body = render(data["sections"].get(key) or {})
        if body:
            lines += ["", f"## {title}", "", body]
    return "\n".join(lines) + "\n"


def _model_path_md(section: dict[str, Any]) -> str:
    results = section.get("results") or []
    if not results:
        return ""
    rows = [[r["pipeline"], f"{r['size']}x{r['size']}", r.get("unet_calls", "-"), _ms(r.get("seconds")),
             f"{_ms(r.get('seconds'), 'min')}-{_ms(r.get('seconds'), 'max')}", _num(r.get("fps")), r["seconds"]["n"],
             _num(r.get("warmup_s"), 2), _num(r.get("build_s"), 1), _gib(r.get("peak_memory_bytes"))] for r in results]
    return (report.table(["pipeline", "size", "UNet calls", "ms/frame", "min-max ms", "fps", "frames", "warm-up s",
                          "build s", "peak GPU GiB"], rows, "llrrrrrrrr")
            + "\n\n" + section.get("what", ""))


def _batching_md(section: dict[str, Any]) -> str:
    results = section.get("results") or []
    if not results:
        return ""
    rows = [[r["users"], _ms(r.get("seconds")), _num(r.get("fps_total")), _num(r.get("fps_per_user")),
             _num(r.get("throughput_vs_one"), 2), r["seconds"]["n"]] for r in results]
    return (report.table(["users", "ms/batch", "fps total", "fps per user", "throughput vs 1 user", "batches"], rows,
                         "rrrrrr") + "\n\n" + section.get("what", ""))


def _temporal_md(section: dict[str, Any]) -> str:
    settings = section.get("settings") or {}
    if not settings:
        return ""
    rows = []
    for key, entry in settings.items():
        rows.append([key, _ms(entry.get("seconds")), _num(entry.get("fps")), _num(entry.get("cost_ratio"), 2),
                     _mib(entry.get("memory_bytes")), _mib(entry.get("cuda_peak_bytes")),
                     _mib(entry.get("cuda_held_bytes"))])
    return (report.table(["temporal_consistency", "ms/frame", "fps", "vs 0", "StreamMemory.nbytes MiB",
                          "GPU peak over weights MiB", "GPU memory held MiB"], rows, "lrrrrrr")
            + "\n\n" + section.get("what", ""))


def _serving_md(section: dict[str, Any]) -> str:
    results = section.get("results") or []
    if not results:
        return ""
    rows = []
    for r in results:
        per = r.get("fps_per_user") or {}
        lat = r.get("latency_ms") or {}
        rows.append([r["users"], _num(r.get("camera_fps"), 0), _num(r.get("fps_total")), _num(per.get("median")),
                     _num(per.get("min")), _num(lat.get("p50")), _num(lat.get("p95")),
                     _num(r.get("server_cpu_ms_per_frame"), 2), r.get("dropped", "-")])
    headers = ["users", "camera fps", "fps total", "fps per user (median)", "min", "latency p50 ms", "p95 ms",
               "server CPU ms/frame", "dropped"]
    return (report.table(headers, rows, "r" * len(headers))
            + f"\n\nmodel: {section.get('model', '-')}. " + section.get("what", ""))


def _compile_md(section: dict[str, Any]) -> str:
    off, on = section.get("off") or {}, section.get("on") or {}
    if not off and not on:
        return ""
    rows = [["off", "-", "-", _ms(off.get("seconds")), _num(off.get("fps")), (off.get("seconds") or {}).get("n", "-")],
            ["on", _num(on.get("compile_s"), 1), ", ".join(f"{t:.2f}" for t in on.get("first_frames_s", [])) or "-",
             _ms(on.get("seconds")), _num(on.get("fps")), (on.get("seconds") or {}).get("n", "-")]]
    speedup = section.get("speedup")
    return (report.table(["torch.compile", "compile s", "first frames s", "ms/frame (steady)", "fps", "frames"], rows,
                         "lrrrrr")
            + (f"\n\nsteady-state speed-up: x{speedup:.2f}" if speedup else "")
            + "\n\n" + section.get("what", ""))


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure a GPU host within a fixed time (full-size random-weight models, no hub): model-path fps "
                    "of every pipeline, batching, torch.compile, temporal consistency's cost, the serving path; JSON "
                    "and Markdown out.")
    parser.add_argument("--out", metavar="DIR", help="output folder; default bench/results/gpu_check-<date>-<time>/")
    parser.add_argument("--quick", action="store_true",
                        help="miniature models (--tiny), small sizes and counts: tests the code path in seconds, "
                             "on any machine")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole check; default {BUDGET:g} (--quick: {QUICK_BUDGET:g})")
    parser.add_argument("--device", default="auto", help="auto (the server's choice), cuda, cpu, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                        help="auto: float16 on a GPU (the server's choice)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.sections = [name for name in args.sections.split(",") if name]
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown or not args.sections:
        parser.error(f"--sections: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    args.sections = [name for name in SECTIONS if name in args.sections]  # always in the planned order
    if args.budget is None:
        args.budget = QUICK_BUDGET if args.quick else BUDGET
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if not args.out:
        args.out = str(REPO_ROOT / "bench" / "results" / time.strftime("gpu_check-%Y%m%d-%H%M%S"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        from bench import gpu_check_sections

        return gpu_check_sections.child_main(args)
    run = Run(args)
    report.progress(f"gpu_check: {'--quick, ' if args.quick else ''}sections {', '.join(args.sections)}; "
                    f"budget {args.budget:g} s; writing to {run.out}")
    try:
        supervise(run)
    except KeyboardInterrupt:
        run.data["errors"].append("interrupted (Ctrl-C)")
        run.write()
        print(markdown(run.data))
        return 130
    run.data["complete"] = True
    run.write()
    print(markdown(run.data))
    print(f"wrote {run.out / 'gpu_check.json'} and {run.out / 'gpu_check.md'}")
    failed = [name for name, section in run.data["sections"].items() if section.get("status") in ("failed", "crashed")]
    return 1 if failed or run.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
