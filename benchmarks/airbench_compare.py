"""Time-to-accuracy: convzoo ``cifar10-fast94`` vs airbench94, same data, same GPU, one invocation.

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

    python benchmarks/airbench_compare.py --airbench ~/src/cifar10-airbench --seeds 5
    python benchmarks/airbench_compare.py --quick     # CPU: converter + a tiny convzoo run only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get(
    "CONVZOO_CIFAR10_JPEG", ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))


def load_split_arrays(source: str, limit: int = 0) -> dict[str, dict]:
    """{'train'|'test': {'images': uint8 (N, H, W, C), 'labels': int64 (N,), 'classes'}} read
    through convzoo's own data sources (an image-folder tree, archive, or a named set)."""
    from convzoo.config import DataConfig
    from convzoo.data.sources import load_dataset

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


def parse_airbench_output(text: str) -> list[tuple[float, float]]:
    """(tta accuracy in %, timed seconds) of every run in airbench's printed table: the rows
    whose ``epoch`` column is ``eval``. Works for the columns of all airbench94 variants."""
    header: list[str] | None = None
    runs = []
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
        if row.get("epoch") != "eval":
            continue
        seconds = row.get("total_time_seconds") or row.get("time_seconds")
        if row.get("tta_val_acc") and seconds:
            runs.append((100.0 * float(row["tta_val_acc"]), float(seconds)))
    return runs


def run_airbench(checkout: Path, script: str, workdir: Path) -> list[tuple[float, float]]:
    """Run airbench's script unmodified with ``workdir`` (holding cifar10/*.pt) as its cwd."""
    path = (checkout / script).resolve()
    if not path.is_file():
        sys.exit(f"airbench_compare: {path} not found (--airbench / --script)")
    print(f"running {path} (cwd {workdir}) ...", flush=True)
    proc = subprocess.run([sys.executable, str(path)], cwd=workdir, text=True,
                          capture_output=True)
    (workdir / "airbench_stdout.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"airbench_compare: airbench exited {proc.returncode}; see "
                 f"{workdir / 'airbench_stdout.txt'}")
    runs = parse_airbench_output(proc.stdout)
    if not runs:
        sys.exit("airbench_compare: found no 'eval' rows in airbench's output")
    return runs


def run_convzoo(recipe: str, source: str, seeds: int, workdir: Path,
                overrides: list[str]) -> list[tuple[float, float, float]]:
    """(top1 %, timed seconds, compile seconds) of ``seeds`` runs of ``recipe`` through
    convzoo's own trainer (``fit``), reading each run's summary.json."""
    import convzoo.models.fast  # noqa: F401  (registers the fast family)
    from convzoo import config as C
    from convzoo.train.loop import fit

    base = C.load_recipe(recipe)
    runs = []
    for seed in range(seeds):
        over: dict = {"data": {"source": source},
                      "train": {"seed": seed, "out": str(workdir / "convzoo"),
                                "name": f"{recipe}-seed{seed}"}}
        for text in overrides:
            over = C.merge(over, C.parse_override(text))
        cfg = C.from_dict(C.merge(base, over))
        run_dir = fit(cfg)
        s = json.loads((run_dir / "summary.json").read_text())
        runs.append((s["top1"], s["timed_seconds"], s["compile_seconds"]))
        print(f"  convzoo seed {seed}: top1 {s['top1']:.2f}%  timed {s['timed_seconds']:.2f}s  "
              f"(compile {s['compile_seconds']:.1f}s, not timed)", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--airbench", type=Path, help="path of a cifar10-airbench checkout")
    p.add_argument("--script", default="airbench94_compiled.py",
                   help="airbench script to run (airbench94.py, airbench94_compiled.py, ...)")
    p.add_argument("--recipe", default="cifar10-fast94")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="data both sides train on")
    p.add_argument("--seeds", type=int, default=5, help="convzoo runs (airbench runs its own n)")
    p.add_argument("--workdir", type=Path, default=Path("bench-airbench"))
    p.add_argument("--set", action="append", default=[], help="extra convzoo overrides")
    p.add_argument("--quick", action="store_true",
                   help="CPU check: converter on a few images + one tiny convzoo run")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"airbench_compare: torch {torch.__version__}, device {device}, data {args.data}")

    if args.quick:
        data = "digits"  # bundled and small: checks the code path offline in seconds
        folder = write_airbench_tensors(data, args.workdir, limit=256)
        train = torch.load(folder / "train.pt")
        print(f"wrote {folder}/train.pt: images {tuple(train['images'].shape)} "
              f"{train['images'].dtype}, labels {tuple(train['labels'].shape)}, "
              f"{len(train['classes'])} classes")
        t0 = time.perf_counter()
        runs = run_convzoo(args.recipe, data, 1, args.workdir, [
            "data.limit=256", "data.image_size=32", "train.epochs=1", "train.batch_size=64",
            "train.eval_batch_size=128", "train.eval_every=1", "train.save_every=1",
            "train.compile=false", "model.kwargs={widths: [16, 32, 32]}", *args.set])
        print(f"convzoo {args.recipe} (tiny, cpu): top1 {runs[0][0]:.2f}%, timed "
              f"{runs[0][1]:.2f}s, wall {time.perf_counter() - t0:.1f}s")
        if not cuda:
            print("airbench: needs CUDA (its loader and timer use the GPU); skipped. "
                  "ratio: n/a on CPU")
            return 0
        if args.airbench is None:
            print("airbench: no --airbench checkout given; skipped. ratio: n/a")
            return 0

    if not cuda:
        print("airbench_compare: the comparison needs a CUDA GPU (use --quick on CPU)")
        return 2
    if args.airbench is None:
        p.error("--airbench PATH (a cifar10-airbench checkout) is required")
    folder = write_airbench_tensors(args.data, args.workdir)
    print(f"wrote {folder}/train.pt and test.pt from {args.data}")
    ab = run_airbench(args.airbench, args.script, args.workdir)
    cz = run_convzoo(args.recipe, args.data, args.seeds, args.workdir, args.set)
    ab_acc = statistics.mean(a for a, _ in ab)
    ab_sec = statistics.mean(s for _, s in ab)
    cz_acc = statistics.mean(a for a, _, _ in cz)
    cz_sec = statistics.mean(s for _, s, _ in cz)
    cz_compile = statistics.mean(c for _, _, c in cz)
    print("timer (both): data-dependent init + all training steps + final TTA evaluation; "
          "excluded: data to GPU, model build, compilation, per-epoch logging")
    print(f"airbench {args.script}: {len(ab)} runs, mean tta acc {ab_acc:.2f}%, "
          f"mean time {ab_sec:.3f}s")
    print(f"convzoo {args.recipe}: {len(cz)} seeds, mean acc {cz_acc:.2f}%, mean time "
          f"{cz_sec:.3f}s (+ {cz_compile:.1f}s compile, reported separately)")
    verdict = "PASS" if cz_sec <= ab_sec and cz_acc >= ab_acc else "FAIL"
    print(f"ratio: convzoo/airbench time {cz_sec / ab_sec:.3f}x (goal <= 1.0), accuracy "
          f"{cz_acc - ab_acc:+.2f} pp (goal >= 0) -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
