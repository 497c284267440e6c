"""Run the full-length ledger runs one after another, each continued with ``--resume auto``.

Every entry of :data:`PLAN` is one ``convzoo train`` command that trains a shipped recipe to its
last epoch. The command is fixed (``--resume auto``), so running this script again after the
machine stopped continues each unfinished run from its last checkpoint and skips finished ones:

    nohup python benchmarks/ledger_runs.py --out ~/ledger --data-root ~/data > ~/ledger/log 2>&1 &
    python benchmarks/ledger_runs.py --list                 # the plan
    python benchmarks/ledger_runs.py --only fast94-s0       # one entry

airbench94's own code (``--airbench``: a checkout of KellerJordan/cifar10-airbench, never part
of this repository) runs on the CPU as ``airbench_compare.py --device cpu`` makes it:
``airbench94-rN`` runs at the same time as ``fast94-sN``, one thread each on the machine's two
cores, with nothing else running (airbench's code cannot resume, so a pair is started at the
beginning of a working session). The runner starts a pair together when both are in the plan
it runs (``--only fast94-s2 airbench94-r2``); ``benchmarks/ledger.py`` pairs the results by the
same name (:func:`beside`).

Each invocation appends one line to ``OUT/NAME.invocations.jsonl`` beside the run directory
(start time, wall seconds, exit code, convzoo's commit, the CPU, the command; rewritten each
minute while the run goes on, with exit code null, so a killed invocation still counts), so the
wall time of a run that took several sessions is the sum of its lines. ``benchmarks/ledger.py
collect`` copies a finished run with that record into ``results/``.

Data: ``DATA_ROOT/cifar10-jpeg`` (the JPEG image-folder copy of CIFAR-10) and
``DATA_ROOT/imagenette`` (Imagenette's train part), unpacked from ``../shared/datasets``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

@dataclass(frozen=True)
class Entry:
    """One run of the plan: ``convzoo train --recipe RECIPE`` (``kind`` train) on
    ``DATA_ROOT/data`` with ``seed`` and ``sets`` overrides, or one run of airbench94's own code
    on the same data and CPU (``kind`` airbench: ``airbench_compare.py --device cpu``)."""

    recipe: str
    data: str = "cifar10-jpeg"
    seed: int = 0
    sets: tuple[str, ...] = ()
    kind: str = "train"


# The CPU runs use one thread (the machine is shared with the test suite) and no torch.compile
# (CPU compile time would dominate a 10-epoch run); neither changes what is computed.
CPU = ("train.threads=1", "train.compile=false", "train.checkpoint_every_minutes=5")
# Imagenette's train/ part only is here: a stratified 10% of it is the validation split.
NETTE = (*CPU, "data.val_fraction=0.1")
AIRBENCH = Entry("airbench94.py", kind="airbench")
# In this order: one run of each kind first (the Imagenette lr chosen on its validation split by
# the 5-epoch runs), then the further seeds, then the 180-epoch run. airbench94-rN runs at the
# same time as fast94-sN (see above); fast94-s0 ran alone, before the pairs were run this way,
# and its airbench94-r0 (run after it, alternately) was stopped with its session.
PLAN: dict[str, Entry] = {
    # README's quickstart figure: three seeds on one thread, one on two (what varies with the
    # thread count is the order of float sums, so the figure is given as a range)
    "quickstart-s0": Entry("quickstart", "", 0, CPU),
    "quickstart-s1": Entry("quickstart", "", 1, CPU),
    "quickstart-s2": Entry("quickstart", "", 2, CPU),
    "quickstart-2threads-s0": Entry("quickstart", "", 0, (*CPU, "train.threads=2")),
    "fast94-s0": Entry("cifar10-fast94", seed=0, sets=CPU),
    "gnet5-s0": Entry("googlenet_bn-imagenette-5ep", "imagenette", 0, NETTE),
    "gnet5-lr0.1-s0": Entry("googlenet_bn-imagenette-5ep", "imagenette", 0,
                            (*NETTE, "optim.lr=0.1")),
    # 0.25 (the recipe's first lr) lifted the training loss above chance through epoch 1 and
    # reached 50.9%: the sweep goes down from there, not up
    "gnet5-lr0.05-s0": Entry("googlenet_bn-imagenette-5ep", "imagenette", 0,
                             (*NETTE, "optim.lr=0.05")),
    "gnet5-lr0.025-s0": Entry("googlenet_bn-imagenette-5ep", "imagenette", 0,
                              (*NETTE, "optim.lr=0.025")),
    # 0.025 still beat 0.05 by 4.1 points: one more halving before the recipes take the best
    "gnet5-lr0.0125-s0": Entry("googlenet_bn-imagenette-5ep", "imagenette", 0,
                               (*NETTE, "optim.lr=0.0125")),
    # 0.0125 reached 72.5%, one validation image under 0.025: the sweep stops and the
    # GoogLeNet-BN recipes take 0.025
    # a second network on the same protocol and lr (the issue's "a second network if it does
    # better"): torchvision's resnet18, the leaderboard's family (xresnet50) at a CPU's cost
    "r18nette5-lr0.05-s0": Entry("googlenet_bn-imagenette-5ep", "imagenette", 0,
                                 (*NETTE, "optim.lr=0.05", "model.name=resnet18",
                                  "model.kwargs={}")),
    # resnet18 reached 76.1% at 0.05, above GoogLeNet-BN's best (72.7% at 0.025): it became a
    # recipe of its own (resnet18-imagenette-*, lr 0.05), its lr chosen the same way
    "r18nette5-lr0.025-s0": Entry("resnet18-imagenette-5ep", "imagenette", 0,
                                  (*NETTE, "optim.lr=0.025")),
    # 0.025 reached 76.2%, one validation image over 0.05: the sweep stops and the ResNet-18
    # recipes take 0.025, as GoogLeNet-BN's did
    # every epoch's checkpoint kept (train.keep_last): gnet5-lr0.025-s0's validation loss spiked
    # to 15.8 after epoch 2 at this lr, and a repeat can then be checked with recomputed BN
    # statistics (how a run executes: its row is the recipe's all the same)
    "gnet20-s0": Entry("googlenet_bn-imagenette-20ep", "imagenette", 0,
                       (*NETTE, "train.keep_last=20")),
    "r18nette20-s0": Entry("resnet18-imagenette-20ep", "imagenette", 0, NETTE),
    "r20fast-s0": Entry("resnet20-cifar10-fast", seed=0, sets=CPU),
    "fast94-s1": Entry("cifar10-fast94", seed=1, sets=CPU),
    "airbench94-r1": AIRBENCH,
    "fast94-s2": Entry("cifar10-fast94", seed=2, sets=CPU),
    "airbench94-r2": AIRBENCH,
    "r20fast-s1": Entry("resnet20-cifar10-fast", seed=1, sets=CPU),
    "gnet5-s1": Entry("googlenet_bn-imagenette-5ep", "imagenette", 1, NETTE),
    "r20neon-s0": Entry("resnet20-cifar10-neon", seed=0, sets=CPU),
}


def beside(name: str) -> str | None:
    """The entry that runs at the same time as ``name``: ``airbench94-rN`` and ``fast94-sN``."""
    for mine, theirs in (("airbench94-r", "fast94-s"), ("fast94-s", "airbench94-r")):
        if name.startswith(mine):
            return theirs + name[len(mine):]
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                               capture_output=True, text=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command(name: str, out: Path, data_root: Path, airbench: Path) -> list[str]:
    e = PLAN[name]
    if e.kind == "airbench":
        return [sys.executable, str(ROOT / "benchmarks" / "airbench_compare.py"), "--device",
                "cpu", "--threads", "1", "--airbench", str(airbench), "--script", e.recipe,
                "--airbench-runs", "1", "--only", "airbench", "--data", str(data_root / e.data),
                "--workdir", str(out / name), "--json", str(out / name / "result.json")]
    data = ["--data", str(data_root / e.data)] if e.data else []  # "": the recipe's own
    cmd = [sys.executable, "-m", "convzoo", "train", "--recipe", e.recipe, *data,
           "--seed", str(e.seed), "--out", str(out), "--name", name, "--resume", "auto"]
    for s in e.sets:
        cmd += ["--set", s]
    return cmd


def finished(run_dir: Path) -> bool:
    """A run is finished when its summary says it reached the config's last epoch (airbench:
    when its result holds a run)."""
    result = run_dir / "result.json"
    if result.is_file():
        return bool(json.loads(result.read_text())["airbench"]["runs"])
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    epochs = (cfg.get("stages") or [{}])[-1].get("train", {}).get("epochs") \
        or cfg["train"]["epochs"]
    return json.loads(summary.read_text()).get("epochs", 0) >= epochs


def machine() -> str:
    """The CPU model, its widest vector extension and the core count: the CPUs this project
    runs on differ by about 2.4x on the same step between AVX2 and AVX-512 parts."""
    from convzoo.bench import cpu_model

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpu_model()}, {isa}, {os.cpu_count()} cores"


HEARTBEAT_SECONDS = 60.0  # how often a running invocation's line is rewritten


def run_one(name: str, out: Path, data_root: Path, airbench: Path) -> int:
    cmd = command(name, out, data_root, airbench)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
    commit = git_commit()  # of the code the run imports now (the folder may move on meanwhile)
    start = time.time()
    log = out / f"{name}.invocations.jsonl"
    earlier = log.read_text() if log.is_file() else ""
    record = {"start": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(),
              "wall_seconds": 0.0, "exit_code": None, "commit": commit,
              "machine": machine(), "command": " ".join(cmd[1:])}

    def write() -> None:
        # The line is rewritten every minute while the run goes on, so an invocation that is
        # killed with the session (the runner too) still counts, to within a minute.
        record["wall_seconds"] = round(time.time() - start, 1)
        tmp = log.with_suffix(".tmp")
        tmp.write_text(earlier + json.dumps(record) + "\n")
        os.replace(tmp, log)

    print(f"[{dt.datetime.now():%F %T}] {name}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=env)
    while True:
        write()
        try:
            rc = proc.wait(timeout=HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            continue
    record["exit_code"] = rc
    write()
    print(f"[{dt.datetime.now():%F %T}] {name}: exit {rc} after {record['wall_seconds']:.0f} s",
          flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path.home() / "ledger")
    p.add_argument("--data-root", type=Path, default=Path.home() / "data")
    p.add_argument("--airbench", type=Path, default=Path.home() / "airbench",
                   help="a cifar10-airbench checkout, or a folder holding airbench94.py")
    p.add_argument("--only", nargs="*", help="entries to run (default: the whole plan, in order)")
    p.add_argument("--list", action="store_true", help="print the plan and each entry's state")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(PLAN)
    for name in names:
        if name not in PLAN:
            p.error(f"unknown entry {name!r} (known: {', '.join(PLAN)})")
    if args.list:
        width = max(map(len, names))
        for name in names:
            state = "finished" if finished(args.out / name) else (
                "started" if (args.out / name).exists() else "not started")
            cmd = command(name, args.out, args.data_root, args.airbench)
            print(f"{name:{width}} {state:12} {' '.join(cmd[1:])}")
        return 0
    failed, done = 0, set()
    for name in names:
        if name in done or finished(args.out / name):
            continue
        pair = [name] + [b for b in [beside(name)] if b in names and b not in done
                         and not finished(args.out / b)]
        done.update(pair)
        if PLAN[name].kind == "airbench" and len(pair) == 1:
            # its time means something only beside its convzoo seed's, in one run of the machine
            print(f"{name}: not run: it runs only together with {beside(name)} (name both; "
                  f"if {beside(name)} has finished, add a new pair to the plan)", flush=True)
            failed += 1
            continue
        with ThreadPoolExecutor(len(pair)) as pool:  # a pair runs at the same time
            codes = list(pool.map(
                lambda n: run_one(n, args.out, args.data_root, args.airbench), pair))
        failed += sum(c != 0 for c in codes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
