"""Every GPU figure convzoo owes, in one command, within a time budget (issue 16).

Run through ``benchmarks/gpu_suite.sh OUT_DIR [--budget SECONDS] [--dry-run]``, which puts
``src`` on PYTHONPATH (no install, no network). In order:

1. probe the machine (GPU, driver, torch, CUDA, cuDNN, ...) and check every input up front
   (the CIFAR-10 JPEG tarball and the airbench script in ``gpu_assets/``, pytest), saying what
   is missing and where to get it;
2. run the steps of ``gpu_steps.STEPS`` in priority order, each in its own process group with
   its own time cap (the smaller of its cap and the budget left), skipping with a reason a
   step whose minimum time no longer fits or whose inputs are missing; a failed or stopped
   step is recorded and the suite goes on;
3. after every step, rewrite ``gpu_results.json`` and ``gpu_results.md`` in OUT_DIR (so a kill
   still leaves them), beside ``gpu_suite.log`` (every command's output) and the few files the
   steps copy there (at most 8 files in all: what the device machine hands back); print the
   Markdown at the end.

``--dry-run`` (CPU, no GPU needed; a test runs it) prints the plan with each step's cap and
checks every command without running it: each benchmark script's ``parse_args`` accepts its
arguments, each ``convzoo train`` parses and its recipe + overrides validate and build the
model, pytest collects the gpu-marked tests, the inputs are there, OUT_DIR gets <= 8 files.
``--quick`` runs every step in its CPU quick form (tiny data, seconds each).

Exit status: 0 when every selected step finished, 1 when one failed, timed out or missed an
input (the results say which), 2 for bad arguments (one line, nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_steps import STEPS, Command, Context, Step, check_input, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULT_FILES = ("gpu_results.json", "gpu_results.md", "gpu_suite.log")
MAX_FILES = 8  # what the device machine hands back from its output folder
RESERVE = 15.0  # seconds of the budget kept for stopping a step and writing the results
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a step's process group
PROBE_CAP = 90.0  # the probe initialises CUDA: seconds on a fresh machine


class UsageError(Exception):
    """Bad arguments: printed as one line, exit 2, nothing written."""


# ----------------------------------------------------------------------------- environment


def probe(path: Path) -> None:
    """Write the machine's description to ``path`` (run in its own process, time-capped)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_cores": os.cpu_count(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    for name in ("torchvision", "triton", "pytest", "numpy"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception:
            info[name] = None
    info["c_compiler"] = shutil.which("cc") or shutil.which("gcc")  # inductor needs one
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_mib=props.total_memory // 2**20,
                    capability=f"{props.major}.{props.minor}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["driver"] = None
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        info["commit"] = git.stdout.strip() if git.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = None
    # a copied checkout has no .git: the caller can name the commit it copied
    info["commit"] = info["commit"] or os.environ.get("CONVZOO_COMMIT") or None
    path.write_text(json.dumps(info, indent=2) + "\n")


def env_lines(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows describing the machine, for the log and the Markdown header."""
    gpu = (f"{env['gpu']} x{env.get('gpu_count', 1)}, {env['gpu_memory_mib']:,} MiB, compute "
           f"capability {env['capability']}" if env.get("gpu") else "none (CUDA not available)")
    return [
        ("GPU", f"{gpu}; driver {env.get('driver') or 'n/a'}"),
        ("software", f"torch {env.get('torch')} (CUDA {env.get('cuda') or 'n/a'}, cuDNN "
                     f"{env.get('cudnn') or 'n/a'}), torchvision {env.get('torchvision')}, "
                     f"triton {env.get('triton') or 'n/a'}, Python {env.get('python')}"),
        ("machine", f"{env.get('cpu_cores')} CPU cores, {env.get('platform')}, C compiler "
                    f"{env.get('c_compiler') or 'none'}"),
        ("convzoo", f"commit {env['commit']}" if env.get("commit")
         else "not a git checkout and no CONVZOO_COMMIT given"),
    ]


# ----------------------------------------------------------------------------- checks


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"_suite_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_command(cmd: Command, ctx: Context) -> str:
    """'' if ``cmd``'s arguments are accepted as they will be run, else one line why not."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if cmd.kind == "script":
                _load_script(cmd.script).parse_args(list(cmd.args))
            elif cmd.kind == "convzoo":
                from convzoo.cli import build_parser, build_train_config
                from convzoo.models import create_model

                args = build_parser().parse_args(list(cmd.args))
                cfg = build_train_config(args)
                create_model(cfg.model.name, **cfg.model.kwargs)
            else:
                return _check_pytest(cmd, ctx)
    except SystemExit as e:
        if e.code:
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            return lines[-1] if lines else f"argument parser exited {e.code}"
    except Exception as e:  # ConvzooError and anything a config or model build raises
        return f"{type(e).__name__}: {e}"
    return ""


def _check_pytest(cmd: Command, ctx: Context) -> str:
    """pytest must collect at least one test with the step's selection."""
    args = [a for a in cmd.args if not a.startswith("--junitxml")]
    proc = subprocess.run([ctx.python, "-m", "pytest", "--collect-only", *args], cwd=ctx.root,
                          capture_output=True, text=True, timeout=300, env=child_env(ctx))
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        return f"pytest --collect-only {' '.join(args)} exited {proc.returncode}: {tail[0]}"
    return ""


def child_env(ctx: Context) -> dict[str, str]:
    src = str(ctx.root / "src")
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=src + (os.pathsep + path if path else ""),
                PYTHONUNBUFFERED="1")


# ----------------------------------------------------------------------------- running


def run_command(argv: list[str], cwd: Path, env: dict[str, str], cap: float,
                log: TextIO) -> tuple[str, int | None]:
    """Run ``argv`` in its own process group, output appended to ``log``; after ``cap``
    seconds SIGTERM the whole group (DataLoader workers, compile workers, airbench), then
    SIGKILL after a grace. Returns ('ok' | 'failed' | 'timeout', exit code)."""
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    # A new process group, not a new session: whoever ends the suite's session (the device
    # tool at its timeout) still ends the steps' processes with it.
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", **group)
    RUNNING.add(proc.pid)

    def copy() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(cap, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE)
    _signal_group(proc.pid, signal.SIGKILL)  # whatever the step left behind in its group
    proc.wait()
    RUNNING.discard(proc.pid)
    reader.join(timeout=5)
    if timed_out:
        log.write(f"[gpu_suite] stopped after the {cap:.0f} s cap\n")
        return "timeout", proc.returncode
    return ("ok" if proc.returncode == 0 else "failed"), proc.returncode


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


RUNNING: set[int] = set()  # process groups of the commands running now


def _stop_on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT to the suite: stop the running step's group, then unwind (the results
    files are rewritten on the way out)."""
    for pid in list(RUNNING):
        _signal_group(pid, signal.SIGKILL)
    raise SystemExit(128 + signum)


class Suite:
    """One invocation: the plan, the records of its steps and the results files."""

    def __init__(self, args: argparse.Namespace, ctx: Context, steps: list[Step]):
        self.args, self.ctx, self.steps = args, ctx, steps
        self.t0 = time.monotonic()
        self.env: dict[str, Any] = {}
        self.inputs: dict[str, tuple[bool, str]] = {}
        self.records: dict[str, dict[str, Any]] = ctx.records
        for step in steps:
            self.records[step.name] = {
                "name": step.name, "title": step.title, "status": "pending",
                "cap_s": None if math.isinf(self.cap(step)) else self.cap(step),
                "seconds": None, "note": "", "commands": [], "result": None}

    def cap(self, step: Step) -> float:
        return self.ctx.cap(step)

    def selected(self, step: Step) -> bool:
        return not self.args.only or step.name in self.args.only

    def out_files(self) -> list[str]:
        names = list(RESULT_FILES)
        for step in self.steps:
            if self.selected(step):
                names += list(step.output_files(self.ctx))
        return names

    def check_inputs(self) -> None:
        keys = sorted({k for s in self.steps if self.selected(s)
                       for k in s.required_inputs(self.ctx)})
        self.inputs = {k: check_input(k, self.ctx) for k in keys}

    # ---------------------------------------------------------------- plan / dry run

    def plan_text(self) -> str:
        mode = "CPU quick forms" if self.ctx.quick else "GPU"
        lines = [f"gpu_suite plan: budget {self.args.budget:.0f} s, {mode}; out "
                 f"{self.args.out_dir or '(none: dry run)'}; work {self.ctx.work}; assets "
                 f"{self.ctx.assets}", "inputs:"]
        for key, (ok, text) in self.inputs.items():
            lines.append(f"  {'ok     ' if ok else 'MISSING'} {key}: {text}")
        lines.append("steps, in priority order (each in its own process group, stopped at its "
                     "cap; skipped when its minimum no longer fits the budget left):")
        for i, step in enumerate(self.steps, 1):
            cap = self.cap(step)
            cap_text = "the rest of the budget" if math.isinf(cap) else f"cap {cap:.0f} s"
            chosen = "" if self.selected(step) else "  [not selected: --only]"
            lines.append(f"  {i}. {step.name}: {step.title} ({cap_text}, needs >= "
                         f"{step.need:.0f} s){chosen}")
            for cmd in step.commands(self.ctx):
                lines.append(f"       {shlex.join(cmd.argv(self.ctx.python))}")
        files = self.out_files()
        lines.append(f"files in OUT_DIR: {len(files)} (<= {MAX_FILES}): {', '.join(files)}")
        return "\n".join(lines)

    def dry_run(self) -> int:
        print(self.plan_text())
        problems = [f"input {k}: {text}" for k, (ok, text) in self.inputs.items() if not ok]
        if len(self.out_files()) > MAX_FILES:
            problems.append(f"{len(self.out_files())} files planned in OUT_DIR, the device "
                            f"machine hands back {MAX_FILES}")
        print("checks (arguments parsed and validated as they will run, nothing executed):")
        for step in self.steps:
            if not self.selected(step):
                continue
            for cmd in step.commands(self.ctx):
                problem = check_command(cmd, self.ctx)
                label = f"{step.name}: {cmd.kind} {cmd.script.name if cmd.script else ''}"
                print(f"  {'ok  ' if not problem else 'FAIL'} {label.strip()}"
                      + (f": {problem}" if problem else ""))
                if problem:
                    problems.append(f"{step.name}: {problem}")
        if problems:
            print(f"gpu_suite: dry run found {len(problems)} problem(s):")
            for p in problems:
                print(f"  - {p}")
            return 1
        print("gpu_suite: dry run ok")
        return 0

    # ---------------------------------------------------------------- real run

    def remaining(self) -> float:
        return self.args.budget - RESERVE - (time.monotonic() - self.t0)

    def run(self, out: Path) -> int:
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / "gpu_suite.log"
        with log_path.open("w") as log:
            log.write(self.plan_text() + "\n\n")
            for label, text in env_lines(self.env):
                log.write(f"{label}: {text}\n")
            self.write(out)
            try:
                for step in self.steps:
                    self.run_step(step, out, log, log_path)
                    self.write(out)
            except SystemExit:  # stopped from outside (_stop_on_signal): keep what was done
                for rec in self.records.values():
                    if rec["status"] == "running":
                        rec.update(status="stopped", note="the suite was stopped from outside")
                self.write(out)
                raise
        self.write(out, final=True)
        markdown = (out / "gpu_results.md").read_text()
        print("\n" + markdown)
        bad = [r for r in self.records.values()
               if r["status"] in ("failed", "timeout", "missing input", "bad arguments")]
        return 1 if bad else 0

    def run_step(self, step: Step, out: Path, log: TextIO, log_path: Path) -> None:
        rec = self.records[step.name]
        if not self.selected(step):
            rec["status"] = "not selected"
            return
        missing = [text for k in step.required_inputs(self.ctx)
                   for ok, text in [self.inputs[k]] if not ok]
        if missing:
            rec.update(status="missing input", note="; ".join(missing))
            self.say(f"{step.name}: missing input: {rec['note']}")
            return
        remaining = self.remaining()
        cap = min(self.cap(step), remaining)
        if cap < step.need:
            rec.update(status="skipped", note=f"needs >= {step.need:.0f} s, {max(remaining, 0):.0f}"
                       f" s of the budget left; run it alone: --only {step.name}")
            self.say(f"{step.name}: skipped ({rec['note']})")
            return
        commands = step.commands(self.ctx)
        problems = [p for p in (check_command(c, self.ctx) for c in commands
                                if c.kind != "pytest") if p]
        if problems:
            rec.update(status="bad arguments", note="; ".join(problems))
            self.say(f"{step.name}: bad arguments: {rec['note']}")
            return
        rec["note"] = step.before(self.ctx, cap)
        rec["status"] = "running"
        self.write(out)
        self.say(f"{step.name}: running (cap {cap:.0f} s){': ' + rec['note'] if rec['note'] else ''}")
        log.write(f"\n===== {step.name}: {step.title} (cap {cap:.0f} s) =====\n")
        log.flush()
        self.ctx.files.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        status = "ok"
        for cmd in commands:
            argv = cmd.argv(self.ctx.python)
            left = cap - (time.monotonic() - start)
            mark = log_path.stat().st_size
            status, code = run_command(argv, self.ctx.root, child_env(self.ctx), left, log)
            rec["commands"].append({"argv": shlex.join(argv), "status": status, "exit": code})
            if status != "ok":
                if status == "failed":
                    rec["note"] = f"exit {code}: {_tail_since(log_path, mark)}"
                else:
                    rec["note"] = f"stopped at the {cap:.0f} s cap" + (
                        f"; {rec['note']}" if rec["note"] else "")
                break
        rec["seconds"] = round(time.monotonic() - start, 1)
        rec["status"] = status
        try:
            rec["result"] = step.collect(self.ctx)
        except Exception as e:  # a reader problem must not lose the other steps
            rec["result"] = None
            rec["note"] += f" (results unreadable: {type(e).__name__}: {e})"
        for name, src in step.output_files(self.ctx).items():
            if src.is_file():
                shutil.copyfile(src, out / name)
        self.say(f"{step.name}: {status} in {rec['seconds']:.0f} s"
                 + (f" ({rec['note']})" if status != "ok" and rec["note"] else ""))

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[gpu_suite {elapsed:5.0f}s] {text}", flush=True)

    # ---------------------------------------------------------------- results

    def results(self, final: bool) -> dict[str, Any]:
        return {
            "suite": {"command": self.args.command_line, "date": self.args.date,
                      "budget_s": self.args.budget, "quick": self.ctx.quick,
                      "elapsed_s": round(time.monotonic() - self.t0, 1), "final": final,
                      "seeds": self.ctx.seeds, "work": str(self.ctx.work)},
            "env": self.env,
            "inputs": {k: {"ok": ok, "detail": text} for k, (ok, text) in self.inputs.items()},
            "steps": [self.records[s.name] for s in self.steps],
        }

    def write(self, out: Path, final: bool = False) -> None:
        data = self.results(final)
        _atomic_write(out / "gpu_results.json", json.dumps(data, indent=2, default=str) + "\n")
        _atomic_write(out / "gpu_results.md", markdown(data, self.steps))


def _tail_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.startswith(("$ ", "[gpu_suite]"))]
    return " / ".join(kept[-3:])[-400:]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(data: dict[str, Any], steps: list[Step]) -> str:
    """gpu_results.md: the header (date, GPU, versions, command), the step table, then each
    step's tables, ready to paste into BENCHMARKS.md / RESULTS.md."""
    suite = data["suite"]
    head = [("date", suite["date"]), ("command", f"`{suite['command']}`"),
            *env_lines(data["env"]),
            ("budget", f"{suite['budget_s']:.0f} s, {suite['elapsed_s']:.0f} s used"
                       + ("" if suite["final"] else " so far (the suite was still running)"))]
    parts = ["# convzoo GPU results" + (" (CPU quick forms: no GPU figures)" if suite["quick"]
                                       else ""), "",
             table(["", ""], [[k, v] for k, v in head], "ll")]
    rows = []
    for i, rec in enumerate(data["steps"], 1):
        cap = "rest" if rec["cap_s"] is None else f"{rec['cap_s']:.0f}"
        rows.append([str(i), rec["name"], rec["status"],
                     "" if rec["seconds"] is None else f"{rec['seconds']:.0f}", cap,
                     rec["note"].replace("|", "/")])
    parts += ["## Steps", "", table(["#", "step", "status", "s", "cap s", "note"], rows, "rllrrl")]
    for step, rec in zip(steps, data["steps"], strict=True):
        parts += [f"## {step.title}", ""] + ([f"For {step.goes_to}.", ""] if step.goes_to else [])
        if rec["result"]:
            try:
                parts.append(step.markdown(rec["result"]))
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
                parts.append(f"(results present but not tabulated: {type(e).__name__}: {e}; "
                             "see gpu_results.json)\n")
        else:
            parts.append(f"not measured: {rec['status']}"
                         + (f" ({rec['note']})" if rec["note"] else "") + "\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_suite.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", type=Path, metavar="OUT_DIR",
                   help="where gpu_results.json/.md and the log go (at most 8 files)")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds for the whole suite (default 480)")
    p.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="check every step's command and arguments and print the plan; run nothing")
    p.add_argument("--quick", action="store_true", help="run every step's CPU quick form")
    p.add_argument("--only", default="", help="comma list of steps to run (default: all)")
    p.add_argument("--cap", action="append", default=[], metavar="STEP=SECONDS",
                   help="override one step's time cap (repeatable)")
    p.add_argument("--seeds", type=int, default=3,
                   help="airbench runs and convzoo seeds in the airbench comparison (default 3)")
    p.add_argument("--assets", type=Path, default=ROOT / "gpu_assets",
                   help="folder with cifar10-jpeg.tar.gz and airbench/ (default gpu_assets/)")
    p.add_argument("--workdir", type=Path,
                   default=Path(tempfile.gettempdir()) / "convzoo-gpu-suite",
                   help="scratch folder: extracted data, runs (default: $TMPDIR/convzoo-gpu-suite)")
    p.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parsed arguments; raises UsageError with one line for anything out of range."""
    args = build_parser().parse_args(argv)
    if args.probe:
        return args
    args.command_line = shlex.join(["benchmarks/gpu_suite.sh", *argv])
    args.date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = [s.name for s in STEPS]
    if not math.isfinite(args.budget) or args.budget <= 0:
        raise UsageError(f"--budget {args.budget:g}: must be a positive number of seconds")
    if args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: must be >= 1")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in names]
    if unknown:
        raise UsageError(f"--only {','.join(unknown)}: unknown step; steps: {', '.join(names)}")
    args.caps = {}
    for text in args.cap:
        name, sep, value = text.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not sep or name not in names or not seconds > 0:
            raise UsageError(f"--cap {text}: expected STEP=SECONDS with SECONDS > 0 and STEP "
                             f"one of {', '.join(names)}")
        args.caps[name] = seconds
    if args.out_dir is None and not args.dry_run:
        raise UsageError("OUT_DIR is required (only --dry-run runs without one)")
    if args.out_dir is not None:
        check_out_dir(args.out_dir)
    return args


def check_out_dir(out: Path) -> None:
    """OUT_DIR may be new, or hold nothing but an earlier run's files: the device machine
    hands back at most 8 files, so nothing else may share the folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT_DIR {out}: exists and is not a folder")
    if out.is_dir():
        ours = set(RESULT_FILES) | {n for s in STEPS for n in s.output_files(
            Context(ROOT, work=Path(), assets=Path()))}  # the names do not depend on the paths
        others = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if others:
            raise UsageError(f"OUT_DIR {out}: holds {len(others)} other entries "
                             f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                             "give an empty or new folder")


def context(args: argparse.Namespace) -> Context:
    return Context(root=ROOT, work=args.workdir.resolve(), assets=args.assets.resolve(),
                   quick=args.quick, seeds=args.seeds, caps=args.caps,
                   stamp=datetime.now().strftime("%Y%m%d-%H%M%S"))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"gpu_suite: error: {e}", file=sys.stderr)
        return 2
    if args.probe:
        probe(args.probe)
        return 0
    if importlib.util.find_spec("torch") is None:
        print(f"gpu_suite: error: {sys.executable} cannot import torch", file=sys.stderr)
        return 2
    ctx = context(args)
    suite = Suite(args, ctx, STEPS)
    suite.check_inputs()
    if args.dry_run:
        return suite.dry_run()

    # The machine first (in its own capped process: CUDA start-up can hang on a bad driver).
    ctx.files.mkdir(parents=True, exist_ok=True)
    probe_file = ctx.out("env.json")
    with open(os.devnull, "w") as sink:
        status, _ = run_command([ctx.python, __file__, "--probe", str(probe_file)], ROOT,
                                child_env(ctx), PROBE_CAP, sink)
    suite.env = json.loads(probe_file.read_text()) if probe_file.is_file() else {}
    if not suite.env:
        print(f"gpu_suite: error: probing the machine failed ({status}): run "
              f"`{ctx.python} -c 'import torch; print(torch.cuda.is_available())'` to see why",
              file=sys.stderr)
        return 2
    if not args.quick and not suite.env.get("cuda_available"):
        print(f"gpu_suite: error: no CUDA device (torch {suite.env.get('torch')} sees none); "
              "on a CPU use --dry-run or --quick", file=sys.stderr)
        return 2
    for label, text in env_lines(suite.env):
        print(f"{label}: {text}")
    for key, (ok, text) in suite.inputs.items():
        print(f"input {key}: {'ok' if ok else 'MISSING'}: {text}")
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    return suite.run(args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
