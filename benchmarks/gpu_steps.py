"""The steps of the GPU suite (``gpu_suite.py``), in priority order: what each runs, within what
time cap, what it reads back, and the Markdown table it contributes to ``gpu_results.md``.

Each step is one or more commands run from the repository root, each a benchmark script of this
folder (checked by the script's own ``parse_args``), ``python -m convzoo train`` (checked by
convzoo's own parser and config validation) or pytest. A step's figures come from files its
commands write under the suite's work folder (``--json`` of the scripts, a run directory's
``summary.json`` / ``metrics.jsonl``, pytest's JUnit XML), read by ``collect`` even after a
timeout, so a step stopped at its cap still reports what it finished.

Caps and minimum times (``need``) are first guesses for one H100/H200, to be revised from the
``seconds`` each step took in a real run (gpu_results.json records them).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
AIRBENCH_REPO = "https://github.com/KellerJordan/cifar10-airbench"
AIRBENCH_SCRIPT = "airbench94_compiled.py"  # the paper's 3.09 s anchor, legacy/ in the repo


@dataclass
class Context:
    """Everything a step needs to build its commands and find its outputs."""

    root: Path  # repository root (commands run here, with PYTHONPATH=src)
    work: Path  # scratch folder: extracted data, run directories, JSON outputs
    assets: Path  # the ignored folder beside the checkout: tarball + airbench script
    quick: bool = False  # CPU quick forms of every step
    seeds: int = 3  # airbench runs and convzoo seeds in the airbench comparison
    stamp: str = "run"  # distinguishes this invocation's run directories
    python: str = sys.executable
    caps: dict[str, float] = field(default_factory=dict)  # --cap overrides: step name -> s
    records: dict[str, dict] = field(default_factory=dict)  # step name -> its record so far

    def cap(self, step: Step) -> float:
        return self.caps.get(step.name, step.cap)

    @property
    def cifar(self) -> Path:
        return self.assets / "cifar10-jpeg.tar.gz"

    @property
    def airbench(self) -> Path:
        return self.assets / "airbench"

    @property
    def files(self) -> Path:
        """This invocation's files (JSON outputs, logs) under the work folder."""
        return self.work / self.stamp

    def out(self, name: str) -> Path:
        return self.files / name


@dataclass(frozen=True)
class Command:
    """One process of a step. ``kind`` says how the dry run checks ``args``: ``script`` (the
    benchmark script's ``parse_args``), ``convzoo`` (convzoo's CLI parser and config) or
    ``pytest`` (collection of the selected tests)."""

    kind: str
    args: tuple[str, ...]
    script: Path | None = None

    def argv(self, python: str) -> list[str]:
        if self.kind == "script":
            return [python, str(self.script), *self.args]
        if self.kind == "convzoo":
            return [python, "-m", "convzoo", *self.args]
        return [python, "-m", "pytest", *self.args]


def script(name: str, *args: str) -> Command:
    return Command("script", tuple(args), BENCH / name)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    key: str
    what: str
    how: str  # what to do when it is missing


def find_airbench_script(ctx: Context) -> Path | None:
    for path in (ctx.airbench / AIRBENCH_SCRIPT, ctx.airbench / "legacy" / AIRBENCH_SCRIPT):
        if path.is_file():
            return path
    return None


def check_input(key: str, ctx: Context) -> tuple[bool, str]:
    """(present and usable, one line saying what was found or what to copy where)."""
    if key == "cifar":
        return check_cifar_tarball(ctx.cifar)
    if key == "airbench":
        path = find_airbench_script(ctx)
        if path is None:
            return False, (f"{ctx.airbench / AIRBENCH_SCRIPT} missing: copy "
                           f"legacy/{AIRBENCH_SCRIPT} of {AIRBENCH_REPO} there")
        return True, f"{path} ({path.stat().st_size:,} bytes)"
    if key == "pytest":
        import importlib.util

        if importlib.util.find_spec("pytest") is None:
            return False, "pytest is not importable by this Python"
        import pytest

        return True, f"pytest {pytest.__version__}"
    raise ValueError(key)


def check_cifar_tarball(path: Path) -> tuple[bool, str]:
    """The tarball must hold ``cifar10-jpeg/{train,test}/<class>/*`` (checked by listing it)."""
    if not path.is_file():
        return False, (f"{path} missing: copy ../shared/datasets/cifar10-jpeg.tar.gz there "
                       "(the JPEG copy of CIFAR-10, 19.6 MB)")
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = m.name.split("/")
                if m.isfile() and len(parts) == 4 and parts[0] == "cifar10-jpeg" \
                        and parts[1] in counts:
                    counts[parts[1]][parts[2]] = counts[parts[1]].get(parts[2], 0) + 1
    except (tarfile.TarError, OSError, EOFError) as e:
        return False, f"{path}: not a readable tar archive ({e})"
    if not counts["train"] or not counts["test"] or set(counts["train"]) != set(counts["test"]):
        return False, (f"{path}: expected cifar10-jpeg/train/<class>/* and "
                       "cifar10-jpeg/test/<class>/* with the same classes")
    n_train, n_test = sum(counts["train"].values()), sum(counts["test"].values())
    return True, (f"{path} ({path.stat().st_size / 1e6:.1f} MB: {n_train} train / {n_test} test "
                  f"images, {len(counts['train'])} classes)")


# ----------------------------------------------------------------------------- steps


class Step:
    """A step: ``commands`` run in order within ``cap`` seconds; skipped when less than
    ``need`` seconds of the budget are left; ``output_files`` are copied into OUT_DIR."""

    name = ""
    title = ""
    goes_to = ""  # where its table is pasted
    cap: float = 60.0
    need: float = 10.0
    inputs: tuple[str, ...] = ()
    quick_inputs: tuple[str, ...] | None = None  # inputs in --quick (default: the same)

    def required_inputs(self, ctx: Context) -> tuple[str, ...]:
        if ctx.quick and self.quick_inputs is not None:
            return self.quick_inputs
        return self.inputs

    def commands(self, ctx: Context) -> list[Command]:
        raise NotImplementedError

    def output_files(self, ctx: Context) -> dict[str, Path]:
        """Files copied into OUT_DIR after the step: {name in OUT_DIR: source}."""
        return {}

    def before(self, ctx: Context, cap: float) -> str:
        """A note on the plan for this run (e.g. an estimate), given its effective cap."""
        return ""

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        """The figures the commands left (None if none)."""
        return None

    def markdown(self, result: dict[str, Any]) -> str:
        return ""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}{unit}"


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A Markdown table; ``align`` holds one l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "".join("---|" if a == "l" else "---:|" for a in align)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class GpuTests(Step):
    name = "gpu-tests"
    title = "the gpu-marked tests (CUDA paths of augmentation, preprocessing, streaming)"
    goes_to = "the closing note of issue 16; each failure becomes an issue"
    cap, need = 120.0, 20.0
    inputs = ("pytest",)

    def output_files(self, ctx: Context) -> dict[str, Path]:
        return {"gpu_tests_junit.xml": ctx.out("gpu-tests-junit.xml")}

    def commands(self, ctx: Context) -> list[Command]:
        # a test module that fails to import (a package the machine lacks) must not stop the
        # gpu tests of the other modules: it is reported as an error in the JUnit file
        return [Command("pytest", ("-q", "-m", "gpu", "-p", "no:cacheprovider",
                                   "--continue-on-collection-errors",
                                   f"--junitxml={ctx.out('gpu-tests-junit.xml')}", "tests"))]

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        path = ctx.out("gpu-tests-junit.xml")
        try:
            tree = ET.parse(path)
        except (OSError, ET.ParseError):
            return None
        tests = []
        for case in tree.iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed"}.get(tag, tag)
                    message = (node.get("message") or "").splitlines()[0][:160] if \
                        node.get("message") else ""
                    break
            # a module skipped or broken at collection has no classname: its name is the module
            classname, name = case.get("classname") or "", case.get("name") or ""
            tests.append({"test": f"{classname}::{name}" if classname else name,
                          "outcome": outcome, "seconds": float(case.get("time") or 0),
                          "message": message})
        counts: dict[str, int] = {}
        for t in tests:
            counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
        return {"tests": tests, "counts": counts}

    def markdown(self, result: dict[str, Any]) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(result["counts"].items()))
        rows = [[f"`{t['test']}`", t["outcome"], fmt(t["seconds"], ".1f"),
                 t["message"].replace("|", "/")] for t in result["tests"]]
        return (f"{len(result['tests'])} tests: {counts or 'none'}\n\n"
                + table(["test", "outcome", "s", "message"], rows, "llrl"))


class Airbench(Step):
    name = "airbench"
    title = "airbench94 (compiled) vs cifar10-fast94: mean accuracy and time over seeds"
    goes_to = "BENCHMARKS.md, a GPU section under the issue 6 goals"
    cap, need = 300.0, 90.0
    inputs = ("cifar", "airbench")
    quick_inputs = ()  # --quick: digits on the convzoo side; airbench itself needs CUDA

    def commands(self, ctx: Context) -> list[Command]:
        common = ["--workdir", str(ctx.out("airbench")), "--json", str(ctx.out("airbench.json"))]
        if ctx.quick:
            return [script("airbench_compare.py", "--quick", *common)]
        return [script("airbench_compare.py", "--airbench", str(ctx.airbench),
                       "--script", AIRBENCH_SCRIPT, "--data", str(ctx.cifar),
                       "--seeds", str(ctx.seeds), "--airbench-runs", str(ctx.seeds),
                       # airbench's own compile (max-autotune) and runs get half the cap,
                       # the convzoo side (3 seeds, compiled) the rest
                       "--airbench-timeout", str(int(ctx.cap(self) / 2)), *common)]

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        return read_json(ctx.out("airbench.json"))

    def markdown(self, r: dict[str, Any]) -> str:
        s, ab, cz = r.get("summary", {}), r.get("airbench", {}), r.get("convzoo", {})
        warm = ab.get("warmup_seconds")
        ab_note = (f"start-up + compile + warm-up run {warm:.1f} s" if warm is not None
                   else ab.get("stopped", ""))
        if ab.get("stopped") not in (None, "finished") and warm is not None:
            ab_note += f"; stopped {ab['stopped']}"
        cz_runs = cz.get("runs", [])
        rows = [
            [f"airbench `{ab.get('script', r.get('script', '?'))}`", str(len(ab.get("runs", []))),
             fmt(s.get("airbench_mean_acc"), ".2f", "%"),
             fmt(s.get("airbench_mean_seconds"), ".3f"), ab_note],
            [f"convzoo `{r.get('recipe', '?')}`", str(len(cz_runs)),
             fmt(s.get("convzoo_mean_acc"), ".2f", "%"), fmt(s.get("convzoo_mean_seconds"), ".3f"),
             f"compile {fmt(s.get('convzoo_mean_compile_seconds'), '.1f')} s per seed (not timed)"],
        ]
        out = table(["side", "runs", "mean accuracy", "mean time (s)", "outside the timer"],
                    rows, "lrrrl")
        if cz_runs:
            out += "\nconvzoo per seed (top-1 %, timed s, compile s): " + "; ".join(
                f"{a:.2f} / {t:.3f} / {c:.1f}" for a, t, c in cz_runs) + "\n"
        if ab.get("runs"):
            out += "airbench per run (tta %, s): " + "; ".join(
                f"{a:.2f} / {t:.3f}" for a, t in ab["runs"]) + "\n"
        if "time_ratio" in s:
            out += (f"\n`ratio: convzoo/airbench time {s['time_ratio']:.3f}x (goal <= 1.0), "
                    f"accuracy {s['acc_delta_pp']:+.2f} pp (goal >= 0) -> {s['verdict']}`\n")
        else:
            out += "\nratio: n/a (one side has no finished run)\n"
        return out


class ResNet56(Step):
    name = "resnet56"
    title = "ResNet-56 neon protocol vs the plain PyTorch loop: s/epoch, peak memory, ratio"
    goes_to = "BENCHMARKS.md, beside the CPU table of the same benchmark"
    cap, need = 150.0, 45.0
    inputs = ("cifar",)
    quick_inputs = ()

    def commands(self, ctx: Context) -> list[Command]:
        common = ["--workdir", str(ctx.work / "resnet56"),
                  "--json", str(ctx.out("resnet56.json"))]
        if ctx.quick:
            return [script("resnet56_vs_baseline.py", "--quick", *common)]
        return [script("resnet56_vs_baseline.py", "--data", str(ctx.cifar), "--epochs", "3",
                       "--workers", "8", *common)]

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        return read_json(ctx.out("resnet56.json"))

    def markdown(self, r: dict[str, Any]) -> str:
        names = {"baseline": "plain PyTorch (ImageFolder + DataLoader + v2, fp32, "
                             "`loss.item()` per step)",
                 "convzoo": "convzoo `fit` (device-resident uint8, batched augmentation, "
                            "channels_last, bf16 on CUDA)"}
        rows = [[names.get(side, side), fmt(v.get("seconds_per_epoch")),
                 fmt(v.get("images_per_second"), ",.0f"), fmt(v.get("peak_memory_mb"), ",.0f")]
                for side, v in r["sides"].items()]
        return (f"{r['model']}, batch {r['batch_size']}, workers: {r['workers']}, "
                f"{r['epochs']} epochs per side (first = warm-up); memory: {r['memory_kind']}\n\n"
                + table(["side", "s/epoch", "img/s", "peak memory (MB)"], rows)
                + f"\n`ratio: convzoo/baseline epochs/s = {r['ratio']:.2f}x (goal >= 3x)`\n")


class Mfu(Step):
    name = "mfu"
    title = "model FLOPs utilisation of resnet56 and fast94 in bf16 (eager, then compiled)"
    goes_to = "BENCHMARKS.md, a GPU section under the issue 6 goals"
    cap, need = 120.0, 30.0

    def commands(self, ctx: Context) -> list[Command]:
        if ctx.quick:
            return [script("mfu.py", "--quick", "--json", str(ctx.out("mfu-eager.json")))]
        return [script("mfu.py", "--batch", "512", "--json", str(ctx.out("mfu-eager.json"))),
                script("mfu.py", "--batch", "512", "--compile",
                       "--json", str(ctx.out("mfu-compile.json")))]

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        runs = [r for r in (read_json(ctx.out(f"mfu-{m}.json")) for m in ("eager", "compile"))
                if r]
        return {"runs": runs} if runs else None

    def markdown(self, result: dict[str, Any]) -> str:
        rows = []
        for r in result["runs"]:
            for m in r["models"]:
                rows.append([m["model"], "yes" if r["compile"] else "no", str(r["batch"]),
                             r["precision"], fmt(m["mflop_per_image"], ".1f"),
                             fmt(m["tflops"], ".2f"), fmt(m["mfu_percent"], ".1f", "%"),
                             fmt(r["peak_tflops"], ".1f"), fmt(m["warmup_seconds"], ".1f")])
        peak = result["runs"][0]["peak_what"]
        return (f"peak: the measured {peak} on the same device\n\n"
                + table(["model", "compile", "batch", "precision", "MFLOP/image",
                         "achieved TFLOP/s", "MFU", "peak TFLOP/s", "warm-up s"], rows,
                        "llrlrrrrr"))


class Loader(Step):
    name = "loader"
    title = "streaming loader (nvJPEG decode) vs ImageFolder + DataLoader at 224 px"
    goes_to = "BENCHMARKS.md, loader throughput (issue 4), and docs/data.md#throughput"
    cap, need = 120.0, 45.0
    inputs = ("cifar",)

    def commands(self, ctx: Context) -> list[Command]:
        common = ["--cifar", str(ctx.cifar), "--cache", str(ctx.work / "loader"),
                  "--json", str(ctx.out("loader.json"))]
        if ctx.quick:
            return [script("loader_throughput.py", "--quick", *common)]
        return [script("loader_throughput.py", "--device", "cuda", "--workers", "8",
                       "--data", "cifar224,cifar32", "--limit", "5000", "--passes", "3",
                       *common)]

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        return read_json(ctx.out("loader.json"))

    def markdown(self, r: dict[str, Any]) -> str:
        decode = "nvJPEG on the GPU" if r["device"] != "cpu" else "CPU workers"
        rows = [[row["data"], str(row["size"]), fmt(row["torchvision"], ",.0f"),
                 fmt(row["convzoo_jpeg"], ",.0f"),
                 fmt(row["convzoo_jpeg"] / row["torchvision"], ".2f", "x"),
                 fmt(row["convzoo_raw"], ",.0f"),
                 fmt(row["convzoo_raw"] / row["torchvision"], ".2f", "x")] for row in r["rows"]]
        return (f"{r['device']}, workers: {r['workers']}, batch {r['batch_size']}, best of "
                f"passes 2..{r['passes']}; JPEG pack decoded by {decode}\n\n"
                + table(["data", "px", "torchvision img/s", "convzoo JPEG pack img/s", "x",
                         "convzoo raw pack img/s", "x"], rows))


class Augment(Step):
    name = "augment"
    title = "batched augmentation on the GPU vs transforms.v2 per image on the CPU"
    goes_to = "BENCHMARKS.md, augmentation throughput (issue 15)"
    cap, need = 90.0, 30.0

    def commands(self, ctx: Context) -> list[Command]:
        out = str(ctx.out("augment.json"))
        if ctx.quick:
            return [script("augment_throughput.py", "--quick", "--json", out)]
        # v2 runs per image on the host, as a DataLoader worker would: 8 of the 16 cores
        return [script("augment_throughput.py", "--device", "cuda", "--threads", "8",
                       "--repeats", "5", "--json", out)]

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        return read_json(ctx.out("augment.json"))

    def markdown(self, r: dict[str, Any]) -> str:
        rows = [[f"{row['size']} px, batch {row['batch']}", row["op"],
                 fmt(statistics.median(row["convzoo_ms"]), ".2f"),
                 fmt(statistics.median(row["v2_ms"]), ".2f"), fmt(row["ratio"], ".1f", "x")]
                for row in r["rows"]]
        where = f"{r['device']} ({r['gpu']})" if r.get("gpu") else r["device"]
        return (f"convzoo on {where}, v2 per image on the CPU with {r['threads']} threads; ms "
                f"per batch, median of {r['repeats']} ({r['clock']} clock)\n\n"
                + table(["images", "op", "convzoo ms", "v2 per image ms", "v2 / convzoo"], rows,
                        "llrrr"))


class Accuracy(Step):
    """A full-length training run of a shipped recipe on the CIFAR-10 JPEG copy; stopped at
    its cap, it still reports s/epoch and peak memory of the epochs it finished."""

    recipe = ""
    goes_to = "RESULTS.md, its GPU runs (the neon run beside the seed B table)"
    inputs = ("cifar",)
    need = 30.0

    def output_files(self, ctx: Context) -> dict[str, Path]:
        return {f"{self.name.replace('-', '_')}_metrics.jsonl": self.run_dir(ctx) / "metrics.jsonl"}

    def run_dir(self, ctx: Context) -> Path:
        return ctx.work / f"runs-{ctx.stamp}" / self.name

    def commands(self, ctx: Context) -> list[Command]:
        args = ["train", "--recipe", self.recipe, "--data", str(ctx.cifar),
                "--out", str(self.run_dir(ctx).parent), "--name", self.name,
                "--set", f"data.root={ctx.work / 'data'}", "--set", "train.loggers=[]"]
        if ctx.quick:  # a tiny form of the same run: 2 epochs on 200 images, on the CPU
            args += ["--device", "cpu", "--epochs", "2", "--batch-size", "64",
                     "--set", "data.limit=200", "--set", "train.eval_batch_size=200"]
        else:
            args += ["--device", "cuda"]
        return [Command("convzoo", tuple(args))]

    def collect(self, ctx: Context) -> dict[str, Any] | None:
        run = self.run_dir(ctx)
        rows = []
        try:
            for line in (run / "metrics.jsonl").read_text().splitlines():
                rows.append(json.loads(line))
        except (OSError, ValueError):
            pass
        if not rows:
            return None
        summary = read_json(run / "summary.json")
        planned = _planned_epochs(run)
        timed = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]  # epoch 1 = warm-up
        evals = [r for r in rows if r.get("eval_top1") is not None]
        last = evals[-1] if evals else {}
        return {
            "recipe": self.recipe, "run_dir": str(run), "finished": summary is not None,
            "epochs_done": len(rows), "epochs_planned": planned,
            "top1": (summary or {}).get("top1", last.get("eval_top1")),
            "top5": (summary or {}).get("top5", last.get("eval_top5")),
            "top1_epoch": last.get("epoch"),
            "seconds_per_epoch": statistics.mean(timed),
            "eval_seconds_per_epoch": statistics.mean(r.get("eval_seconds", 0.0) for r in rows),
            "images_per_second": statistics.mean(r["images_per_second"] for r in rows[1:] or rows),
            "peak_memory_mb": max(r.get("peak_memory_mb", 0.0) for r in rows),
            "train_seconds": (summary or {}).get("train_seconds", sum(r["seconds"] for r in rows)),
            "device": (summary or {}).get("device"),
        }

    def markdown(self, r: dict[str, Any]) -> str:
        done = f"{r['epochs_done']}/{r['epochs_planned'] or '?'}"
        state = "finished" if r["finished"] else (
            f"stopped at the cap: top-1 of epoch {r['top1_epoch']}, not final"
            if r["top1_epoch"] else "stopped at the cap before any evaluation")
        rows = [[f"`{r['recipe']}`", done, fmt(r["top1"], ".2f", "%"), fmt(r["top5"], ".2f", "%"),
                 fmt(r["seconds_per_epoch"], ".2f"), fmt(r["images_per_second"], ",.0f"),
                 fmt(r["peak_memory_mb"], ",.0f"), fmt(r["train_seconds"], ".0f"), state]]
        return table(["recipe", "epochs", "test top-1", "top-5", "s/epoch (train, from epoch 2)",
                      "img/s", "peak memory (MiB)", "train s", "state"], rows, "lrrrrrrrl")


def _planned_epochs(run: Path) -> int | None:
    """train.epochs of the run's config.yaml (the run's own record of its length)."""
    try:
        import yaml

        data = yaml.safe_load((run / "config.yaml").read_text())
        return int(data["train"]["epochs"])
    except (OSError, KeyError, TypeError, ValueError, ImportError):
        return None


class AccuracyFast(Accuracy):
    name = "accuracy-fast"
    title = "full-length accuracy: resnet20-cifar10-fast (40 epochs)"
    recipe = "resnet20-cifar10-fast"
    cap = 300.0


class AccuracyNeon(Accuracy):
    name = "accuracy-neon"
    title = "full-length accuracy: resnet20-cifar10-neon (180 epochs), if it fits"
    recipe = "resnet20-cifar10-neon"
    cap = math.inf  # whatever the budget has left

    def before(self, ctx: Context, cap: float) -> str:
        """Estimate from the fast recipe's epochs: neon's batch is half as large, so twice the
        steps per epoch (at this size a step costs about the same whatever the batch)."""
        fast = (ctx.records.get("accuracy-fast") or {}).get("result")
        if not fast or ctx.quick:
            return ""
        per_epoch = 2 * fast["seconds_per_epoch"] + fast["eval_seconds_per_epoch"]
        need = 180 * per_epoch
        if need <= cap:
            return f"estimated {need:.0f} s for 180 epochs (fits in {cap:.0f} s)"
        return (f"180 epochs need about {need:.0f} s (estimate: 2 x the fast recipe's "
                f"{fast['seconds_per_epoch']:.2f} s/epoch + eval), {cap:.0f} s left: "
                "runs until the cap for s/epoch and peak memory; top-1 will not be final")


STEPS: list[Step] = [GpuTests(), Airbench(), ResNet56(), Mfu(), Loader(), Augment(),
                     AccuracyFast(), AccuracyNeon()]
