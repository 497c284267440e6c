"""Time-to-accuracy: convzoo ``cifar10-fast94`` vs airbench94, same data, same GPU (or CPU), one
invocation.

airbench is *not* part of convzoo: pass the path of a checkout of KellerJordan/cifar10-airbench
(``--airbench PATH``); its script runs unmodified as a subprocess. The only thing we provide is
its input: airbench loads ``cifar10/train.pt`` and ``cifar10/test.pt`` (relative to its working
directory) as dicts ``{'images': uint8 (N, 32, 32, 3), 'labels': int64 (N,), 'classes': [str]}``;
:func:`write_airbench_tensors` writes them from the same data convzoo trains on (by default the
JPEG copy of CIFAR-10), so both read identical pixels.

What is inside the timer, for both (airbench's definition, which convzoo's summary.json
``timed_seconds`` reproduces): the data-dependent init (whitening from training images), every
training step (augmentation, forward, backward, optimizer, lookahead), and the final evaluation
with test-time augmentation on the 10,000 test images. Outside it, for both: loading the data
onto the GPU, building the model, torch.compile's compilation (airbench: its warm-up run;
convzoo: ``compile_seconds``), per-epoch logging / checkpoints.

Where the scripts are: the repository keeps the paper's scripts under ``legacy/``
(``airbench94_compiled.py``, the 3.09 s anchor, and ``airbench94.py``, uncompiled); ``--airbench``
takes either a checkout (``legacy/`` is searched too) or a folder holding the script alone.
The compiled script first runs one warm-up run on random labels (that is where compilation
happens); its row is not counted, and the wall time up to its end is reported as
``warmup_seconds`` (start-up + compilation + one run). ``--airbench-runs N`` stops airbench
after N counted runs (it would run 25), ``--airbench-timeout`` stops it after that many seconds,
keeping the runs it finished; the convzoo side still runs.

    python benchmarks/airbench_compare.py --airbench ~/src/cifar10-airbench --seeds 5
    python benchmarks/airbench_compare.py --quick     # CPU: converter + a tiny convzoo run only
    # on a CPU, one side at a time (the ledger runner interleaves them run by run):
    python benchmarks/airbench_compare.py --device cpu --airbench ~/src/cifar10-airbench \
        --script airbench94.py --airbench-runs 1 --only airbench --json ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get(
    "CONVZOO_CIFAR10_JPEG", ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))
QUICK_OVERRIDES = [  # --quick: one epoch of a narrow fast net, seconds on a CPU
    "data.limit=256", "data.image_size=32", "train.epochs=1", "train.batch_size=64",
    "train.eval_batch_size=128", "train.eval_every=1", "train.save_every=1",
    "train.compile=false", "model.kwargs={widths: [16, 32, 32]}"]


def load_split_arrays(source: str, limit: int = 0) -> dict[str, dict]:
    """{'train'|'test': {'images': uint8 (N, H, W, C), 'labels': int64 (N,), 'classes'}} read
    through convzoo's own data sources (an image-folder tree, archive, or a named set)."""
    from convzoo.config import DataConfig
    from convzoo.data.loading.registry import load_dataset

    ds = load_dataset(DataConfig(source=source, limit=limit, download=False))
    out = {}
    for split in ("train", "test"):
        s = ds.splits[split]
        out[split] = {"images": s.images.permute(0, 2, 3, 1).contiguous(),
                      "labels": s.labels.to(torch.int64), "classes": list(ds.classes)}
    return out


def write_airbench_tensors(source: str, workdir: Path, limit: int = 0) -> Path:
    """Write ``workdir/cifar10/{train,test}.pt`` in airbench's format; returns the folder."""
    folder = workdir / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for split, data in load_split_arrays(source, limit).items():
        torch.save(data, folder / f"{split}.pt")
    return folder


def airbench_rows(text: str) -> list[tuple[str, float, float]]:
    """(run, tta accuracy in %, timed seconds) of every finished run in airbench's printed table.

    A run's ``run`` cell is filled on its first row only; its result is the later row whose
    ``epoch`` is ``eval``. Works for the columns of all airbench94 variants.
    """
    header: list[str] | None = None
    run = ""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "tta_val_acc" in cells:
            header = cells
            continue
        if header is None or len(cells) != len(header):
            continue
        row = dict(zip(header, cells, strict=True))
        run = row.get("run") or run
        seconds = row.get("total_time_seconds") or row.get("time_seconds")
        if row.get("epoch") == "eval" and row.get("tta_val_acc") and seconds:
            rows.append((run, 100.0 * float(row["tta_val_acc"]), float(seconds)))
    return rows


def parse_airbench_output(text: str) -> list[tuple[float, float]]:
    """(tta accuracy in %, timed seconds) of every counted run: all but the compiled scripts'
    first run, named ``warmup``, which trains on random labels to compile the model."""
    return [(acc, sec) for run, acc, sec in airbench_rows(text) if run != "warmup"]


def find_script(checkout: Path, script: str) -> Path:
    """``checkout/script`` or ``checkout/legacy/script`` (where the repository keeps the
    paper's airbench94 scripts); exits with one line naming both places if neither exists."""
    for path in (checkout / script, checkout / "legacy" / script):
        if path.is_file():
            return path.resolve()
    sys.exit(f"airbench_compare: {script} not found in {checkout} or {checkout / 'legacy'} "
             "(--airbench / --script)")


# airbench's scripts run on CUDA only (fp16 weights, CUDA events for its timer). On a CPU
# (``--device cpu``) the script is run as a copy made at run time, in the working folder, with
# these replacements and nothing else: fp32 instead of fp16, tensors on the CPU, its timer's
# CUDA events replaced by wall-clock marks with the same interface (synchronisation is implied
# on a CPU), and the number of runs (25 in the script) taken from AIRBENCH_RUNS.
CPU_EVENT = """
class _WallEvent:  # added by convzoo's airbench_compare: a CUDA timing event on a CPU
    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return 1e3 * (end.t - self.t)
"""
CPU_REPLACEMENTS = [  # (old, new, how many times it must occur; 0 = at least once)
    (".half()", ".float()", 0),
    (".cuda()", "", 0),
    ("torch.device(gpu)", "torch.device('cpu')", 1),
    ("torch.cuda.Event(enable_timing=True)", "_WallEvent()", 2),
    ("torch.cuda.synchronize()", "None", 0),
    ("range(25)", "range(int(os.environ.get('AIRBENCH_RUNS', 25)))", 1),
]


def cpu_script(path: Path, workdir: Path) -> Path:
    """``workdir/<name>_cpu.py``: airbench's script with :data:`CPU_REPLACEMENTS` (see there);
    exits with one line if the script no longer has the expected shape."""
    text = path.read_text()
    for old, new, count in CPU_REPLACEMENTS:
        found = text.count(old)
        if count > 0 and found != count or count == 0 and found == 0:
            sys.exit(f"airbench_compare: {path.name} has {found} x {old!r} (expected "
                     f"{count or 'some'}); its layout changed, the CPU copy cannot be made")
        text = text.replace(old, new)
    if "cuda" in text.replace("torch.cuda.is_available", ""):
        line = next(i for i, t in enumerate(text.splitlines(), 1) if "cuda" in t)
        sys.exit(f"airbench_compare: {path.name} line {line} still uses CUDA after the CPU "
                 "replacements")
    text = "import time\n" + CPU_EVENT + "\n" + text
    out = workdir / f"{path.stem}_cpu.py"
    out.write_text(text)
    return out


def run_airbench(path: Path, workdir: Path, runs: int = 0, timeout: float = 0,
                 env: dict[str, str] | None = None) -> dict:
    """Run airbench's script unmodified with ``workdir`` (holding cifar10/*.pt) as its cwd.

    Its output is streamed (echoed, and kept in ``workdir/airbench_stdout.txt``) so that it can
    be stopped after ``runs`` counted runs (0 = all of them) or ``timeout`` seconds (0 = none);
    the runs finished by then are kept. Returns {'runs': [(tta %, s)], 'warmup_seconds',
    'wall_seconds', 'stopped', 'returncode'}.
    """
    print(f"running {path} (cwd {workdir}) ...", flush=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))  # rows arrive as printed
    proc = subprocess.Popen([sys.executable, str(path)], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stopped = []

    def stop(why: str) -> None:
        if proc.poll() is None and not stopped:
            stopped.append(why)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    timer = threading.Timer(timeout, stop, ("timeout",)) if timeout > 0 else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    lines: list[str] = []
    warmup_seconds = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
        if not line.startswith("|"):
            continue
        rows = airbench_rows("".join(lines))
        if warmup_seconds is None and any(run == "warmup" for run, _, _ in rows):
            warmup_seconds = time.perf_counter() - t0
        if runs and sum(run != "warmup" for run, _, _ in rows) >= runs:
            stop(f"after {runs} runs")
    proc.wait()
    if timer is not None:
        timer.cancel()
    text = "".join(lines)
    (workdir / "airbench_stdout.txt").write_text(text)
    return {"script": path.name, "runs": parse_airbench_output(text),
            "warmup_seconds": warmup_seconds, "wall_seconds": time.perf_counter() - t0,
            "stopped": stopped[0] if stopped else "finished", "returncode": proc.returncode}


def convzoo_config(recipe: str, source: str, seed: int, workdir: Path, overrides: list[str]):
    """The validated config of one convzoo seed: ``recipe`` on ``source`` with ``overrides``."""
    from convzoo import config as C

    over: dict = {"data": {"source": source},
                  "train": {"seed": seed, "out": str(workdir / "convzoo"),
                            "name": f"{Path(recipe).stem}-seed{seed}"}}
    for text in overrides:
        over = C.merge(over, C.parse_override(text))
    return C.from_dict(C.merge(C.load_recipe(recipe), over))


def run_convzoo(recipe: str, source: str, seeds: int, workdir: Path, overrides: list[str],
                on_seed=None) -> list[tuple[float, float, float]]:
    """(top1 %, timed seconds, compile seconds) of ``seeds`` runs of ``recipe`` through
    convzoo's own trainer (``fit``), reading each run's summary.json; ``on_seed(runs)`` is
    called after each seed (the caller saves partial results)."""
    import convzoo.models.fast  # noqa: F401  (registers the fast family)
    from convzoo.training.loop import fit

    runs = []
    for seed in range(seeds):
        run_dir = fit(convzoo_config(recipe, source, seed, workdir, overrides))
        s = json.loads((run_dir / "summary.json").read_text())
        runs.append((s["top1"], s["timed_seconds"], s["compile_seconds"]))
        print(f"  convzoo seed {seed}: top1 {s['top1']:.2f}%  timed {s['timed_seconds']:.2f}s  "
              f"(compile {s['compile_seconds']:.1f}s, not timed)", flush=True)
        if on_seed is not None:
            on_seed(runs)
    return runs


def summarise(result: dict) -> dict:
    """Means and the verdict from the raw runs in ``result`` (written into the JSON)."""
    ab, cz = result["airbench"]["runs"], result["convzoo"]["runs"]
    out: dict = {}
    if ab:
        out["airbench_mean_acc"] = statistics.mean(a for a, _ in ab)
        out["airbench_mean_seconds"] = statistics.mean(s for _, s in ab)
    if cz:
        out["convzoo_mean_acc"] = statistics.mean(a for a, _, _ in cz)
        out["convzoo_mean_seconds"] = statistics.mean(s for _, s, _ in cz)
        out["convzoo_mean_compile_seconds"] = statistics.mean(c for _, _, c in cz)
    if ab and cz:
        out["time_ratio"] = out["convzoo_mean_seconds"] / out["airbench_mean_seconds"]
        out["acc_delta_pp"] = out["convzoo_mean_acc"] - out["airbench_mean_acc"]
        out["verdict"] = "PASS" if out["time_ratio"] <= 1.0 and out["acc_delta_pp"] >= 0 else "FAIL"
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--airbench", type=Path,
                   help="a cifar10-airbench checkout, or a folder holding the script")
    p.add_argument("--script", default="airbench94_compiled.py",
                   help="airbench script to run (airbench94_compiled.py, airbench94.py, ...)")
    p.add_argument("--airbench-runs", type=int, default=0, dest="airbench_runs",
                   help="stop airbench after this many counted runs (0 = all it makes)")
    p.add_argument("--airbench-timeout", type=float, default=0, dest="airbench_timeout",
                   help="stop airbench after this many seconds, keeping its finished runs")
    p.add_argument("--recipe", default="cifar10-fast94")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="data both sides train on")
    p.add_argument("--seeds", type=int, default=5, help="convzoo runs (airbench runs its own n)")
    p.add_argument("--workdir", type=Path, default=Path("bench-airbench"))
    p.add_argument("--set", action="append", default=[], help="extra convzoo overrides")
    p.add_argument("--json", type=Path, help="also write the results here (after each side "
                                             "and each seed, so a stopped run leaves them)")
    p.add_argument("--quick", action="store_true",
                   help="CPU check: converter on a few images + one tiny convzoo run")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="cpu: airbench's script as a CPU copy made at run time (fp32; "
                        "CPU_REPLACEMENTS), convzoo with train.compile=false")
    p.add_argument("--threads", type=int, default=1,
                   help="--device cpu: torch threads of both sides (OMP_NUM_THREADS / "
                        "train.threads)")
    p.add_argument("--only", choices=["both", "airbench", "convzoo"], default="both",
                   help="run one side only (e.g. to interleave the sides run by run)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments: counts in range, the recipe and overrides valid."""
    from convzoo.errors import ConvzooError

    p = build_parser()
    args = p.parse_args(argv)
    if args.seeds < 1 or args.airbench_runs < 0 or args.airbench_timeout < 0:
        p.error("--seeds must be >= 1, --airbench-runs and --airbench-timeout >= 0")
    overrides = [*QUICK_OVERRIDES, *args.set] if args.quick else args.set
    try:
        convzoo_config(args.recipe, args.data, 0, args.workdir, overrides)
    except ConvzooError as e:
        p.error(f"--recipe {args.recipe} / --set: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"airbench_compare: torch {torch.__version__}, device {device}, data {args.data}")
    result: dict = {"recipe": args.recipe, "script": args.script, "device": device,
                    "airbench": {"runs": []}, "convzoo": {"runs": []}}

    def save(**parts) -> None:
        result.update(parts)
        result["summary"] = summarise(result)
        if args.json:
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, args.json)

    if args.quick:
        data = "digits"  # bundled and small: checks the code path offline in seconds
        folder = write_airbench_tensors(data, args.workdir, limit=256)
        train = torch.load(folder / "train.pt")
        print(f"wrote {folder}/train.pt: images {tuple(train['images'].shape)} "
              f"{train['images'].dtype}, labels {tuple(train['labels'].shape)}, "
              f"{len(train['classes'])} classes")
        t0 = time.perf_counter()
        runs = run_convzoo(args.recipe, data, 1, args.workdir, [*QUICK_OVERRIDES, *args.set])
        save(convzoo={"runs": runs, "seeds": 1, "data": data})
        print(f"convzoo {args.recipe} (tiny, cpu): top1 {runs[0][0]:.2f}%, timed "
              f"{runs[0][1]:.2f}s, wall {time.perf_counter() - t0:.1f}s")
        if not cuda:
            save(airbench={"runs": [], "stopped": "needs CUDA"})
            print("airbench: needs CUDA (its loader and timer use the GPU); skipped. "
                  "ratio: n/a on CPU")
            return 0
        if args.airbench is None:
            print("airbench: no --airbench checkout given; skipped. ratio: n/a")
            return 0

    on_cpu = args.device == "cpu" or (args.device == "auto" and not cuda)
    if not on_cpu and not cuda:
        print("airbench_compare: --device cuda needs a CUDA GPU (--device cpu runs both on the "
              "CPU)")
        return 2
    overrides = list(args.set)
    if on_cpu:
        result["device"] = f"cpu ({args.threads} thread{'s' * (args.threads > 1)})"
        overrides = [f"train.threads={args.threads}", "train.compile=false", *overrides]
    ab = {"runs": []}
    if args.only in ("both", "airbench"):
        if args.airbench is None:
            sys.exit("airbench_compare: --airbench PATH (a cifar10-airbench checkout) is "
                     "required")
        script = find_script(args.airbench, args.script)
        folder = write_airbench_tensors(args.data, args.workdir)
        print(f"wrote {folder}/train.pt and test.pt from {args.data}")
        env = None
        if on_cpu:
            script = cpu_script(script, args.workdir)
            env = {"OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": ""}
        ab = run_airbench(script, args.workdir, args.airbench_runs, args.airbench_timeout, env)
        save(airbench=ab)
    cz: list = []
    if args.only in ("both", "convzoo"):
        cz = run_convzoo(args.recipe, args.data, args.seeds, args.workdir, overrides,
                         on_seed=lambda runs: save(convzoo={"runs": runs, "seeds": args.seeds}))
    s = result["summary"]
    print("timer (both): data-dependent init + all training steps + final TTA evaluation; "
          "excluded: data to GPU, model build, compilation, per-epoch logging")
    if ab["runs"]:
        warm = (f", start-up + compile + warm-up run {ab['warmup_seconds']:.1f}s"
                if ab.get("warmup_seconds") is not None else "")
        print(f"airbench {ab['script']}: {len(ab['runs'])} runs, mean tta acc "
              f"{s['airbench_mean_acc']:.2f}%, mean time {s['airbench_mean_seconds']:.3f}s"
              f"{warm}")
    elif args.only != "convzoo":
        print(f"airbench {ab['script']}: no finished run ({ab['stopped']}, exit "
              f"{ab['returncode']}); see {args.workdir / 'airbench_stdout.txt'}")
    if cz:
        print(f"convzoo {args.recipe}: {len(cz)} seeds, mean acc {s['convzoo_mean_acc']:.2f}%, "
              f"mean time {s['convzoo_mean_seconds']:.3f}s (+ "
              f"{s['convzoo_mean_compile_seconds']:.1f}s compile, reported separately)")
    if args.only != "both":
        return 0 if (ab["runs"] or cz) else 1
    if not ab["runs"]:
        print("ratio: n/a (airbench produced no run)")
        return 1
    print(f"ratio: convzoo/airbench time {s['time_ratio']:.3f}x (goal <= 1.0), accuracy "
          f"{s['acc_delta_pp']:+.2f} pp (goal >= 0) -> {s['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
