"""Does starting from trained weights pay? Fine-tuning against training from scratch, on real data.

CIFAR-10 (the JPEG copy in ``../shared/datasets``) split by class: a ResNet-20 is trained on
classes 0-4 (airplane .. deer), then trained for ``--epochs`` on classes 5-9 (dog .. truck) twice
with the same seed and settings: once from scratch, once from the first run's weights with a new
head (``model.init``). Optionally the same from the CIFAR run to Imagenette (10 ImageNet classes,
photographs at ``--imagenette-size`` px; a held-out fifth of its training folder is the eval
split, as Imagenette's archive here has no other). Every run goes through the Python API
(``convzoo.train``), i.e. the ``convzoo train`` path; the figures are each run's ``summary.json``
top-1 on its held-out split.

Example (RESULTS.md's figures; about 25 minutes on 2 CPU cores)::

    python benchmarks/transfer.py --seeds 0 1 --imagenette ../shared/datasets/imagenette-train.tar.gz
    python benchmarks/transfer.py --quick     # seconds: the plumbing, used by a test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
FIRST = ["airplane", "automobile", "bird", "cat", "deer"]
SECOND = ["dog", "frog", "horse", "ship", "truck"]


def extract(archive: Path, root: Path, keep: dict[str, int], classes: list[str] | None) -> Path:
    """An image folder under ``root`` of the first ``keep[split]`` images of each class of each
    split in ``keep`` (all classes when ``classes`` is None), read from an image-folder tarball
    (``<top>/<split>/<class>/<file>``)."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in keep:
                continue
            split, cls = parts[1], parts[2]
            if (classes is not None and cls not in classes) or \
                    counts.get((split, cls), 0) >= keep[split]:
                continue
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            (folder / parts[3]).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    if not counts:
        sys.exit(f"transfer: {archive} holds no <top>/<split>/<class>/<file> images of "
                 f"{', '.join(keep)}")
    return root


def train(out: Path, name: str, data: Path, epochs: int, seed: int, threads: int,
          extra: dict[str, Any]) -> dict[str, Any]:
    """One run through ``convzoo.train``; its summary and wall seconds."""
    import convzoo

    t0 = time.perf_counter()
    run = convzoo.train(None, model="resnet20", data=str(data), epochs=epochs, seed=seed,
                        batch_size=64, out=str(out), name=name,
                        **{"train.threads": threads, "train.loggers": [],
                           "data.root": str(out / "cache"), **extra})
    summary = json.loads((Path(run) / "summary.json").read_text())
    return {"top1": summary["top1"], "wall": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=CIFAR, help="CIFAR-10 JPEG tarball")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=1000, help="1000 = the whole test split")
    p.add_argument("--source-epochs", type=int, default=5, help="epochs on classes 0-4")
    p.add_argument("--epochs", type=int, default=1, help="epochs of both arms on the new data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--imagenette", type=Path, help="Imagenette train tarball: also fine-tune there")
    p.add_argument("--imagenette-per-class", type=int, default=300)
    p.add_argument("--imagenette-size", type=int, default=64)
    p.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the plumbing only")
    args = p.parse_args(argv)
    if args.quick:
        args.train_per_class, args.test_per_class, args.source_epochs = 20, 10, 1
        args.imagenette_per_class, args.imagenette_size, args.seeds = 10, 32, args.seeds[:1]
    if not args.archive.is_file():
        sys.exit(f"transfer: --archive {args.archive}: no such file (the CIFAR-10 JPEG tarball)")
    if args.imagenette is not None and not args.imagenette.is_file():
        sys.exit(f"transfer: --imagenette {args.imagenette}: no such file")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        keep = {"train": args.train_per_class, "test": args.test_per_class}
        first = extract(args.archive, out / "data" / "c0-4", keep, FIRST)
        second = extract(args.archive, out / "data" / "c5-9", keep, SECOND)
        nette = (extract(args.imagenette, out / "data" / "imagenette",
                         {"train": args.imagenette_per_class}, None)
                 if args.imagenette is not None else None)
        nette_keys = {"data.image_size": args.imagenette_size, "data.val_fraction": 0.2}
        rows: list[dict[str, Any]] = []
        for seed in args.seeds:
            src = f"src{seed}"
            base = train(out, src, first, args.source_epochs, seed, args.threads, {})
            rows.append({"task": "CIFAR 0-4 (source)", "seed": seed, "arm": "scratch",
                         "epochs": args.source_epochs, **base})
            tasks = [("CIFAR 5-9", second, {})]
            if nette is not None:
                tasks.append((f"Imagenette {args.imagenette_size}px", nette, nette_keys))
            for task, data, keys in tasks:
                tag = task.split()[0].lower()
                for arm, init in (("scratch", {}), ("fine-tune", {"model.init": str(out / src)})):
                    r = train(out, f"{tag}-{arm}{seed}", data, args.epochs, seed, args.threads,
                              {**keys, **init})
                    rows.append({"task": task, "seed": seed, "arm": arm, "epochs": args.epochs,
                                 **r})
    result = {"date": date.today().isoformat(), "machine": platform.processor() or
              platform.machine(), "command": " ".join(["python", "benchmarks/transfer.py",
                                                       *(argv if argv is not None
                                                         else sys.argv[1:])]),
              "train_per_class": args.train_per_class, "rows": rows}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['date']}, {result['command']}")
    print("| task | arm | epochs | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean |")
    print("|---|---|--:|" + "--:|" * (len(args.seeds) + 1))
    for key in dict.fromkeys((r["task"], r["arm"], r["epochs"]) for r in rows):
        top = [r["top1"] for r in rows if (r["task"], r["arm"], r["epochs"]) == key]
        print(f"| {key[0]} | {key[1]} | {key[2]} | "
              + " | ".join(f"{t:.2f}%" for t in top) + f" | {statistics.fmean(top):.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
