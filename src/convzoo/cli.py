"""The ``convzoo`` command line: train, eval, predict, models, recipes, pack, plot, bench, export.

Every user-input problem surfaces as one line ``convzoo: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from convzoo import config as C
from convzoo.errors import ConvzooError

# ----------------------------------------------------------------------------- train


SHORTCUTS = [("model", "model.name"), ("data", "data.source"), ("epochs", "train.epochs"),
             ("batch_size", "train.batch_size"), ("lr", "optim.lr"), ("out", "train.out"),
             ("name", "train.name"), ("device", "train.device"), ("seed", "train.seed")]


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Nested overrides from the flags the user actually gave (shortcuts, then --set)."""
    out: dict[str, Any] = {}
    for attr, key in SHORTCUTS:
        value = getattr(args, attr, None)
        if value is not None:
            out = C.merge(out, C.dotted_to_nested(key, value))
    for text in args.set or []:
        out = C.merge(out, C.parse_override(text))
    return out


def build_train_config(args: argparse.Namespace) -> C.Config:
    """Defaults <- recipe <- CLI shortcuts <- --set overrides, validated."""
    data = C.load_recipe(args.recipe) if args.recipe else {}
    return C.from_dict(C.merge(data, explicit_overrides(args)))


def resume_config(args: argparse.Namespace) -> C.Config:
    """The run's own config.yaml with this command's overrides applied (a new stage)."""
    run_dir = Path(args.resume)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise ConvzooError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    if args.recipe:
        raise ConvzooError("--resume continues a run with its own config; drop --recipe")
    return C.from_dict(C.merge(C.to_dict(C.load_config(cfg_path)), explicit_overrides(args)))


def cmd_train(args: argparse.Namespace) -> int:
    from convzoo.train.loop import fit

    if args.resume:
        cfg = resume_config(args)
        run_dir = fit(cfg, resume=Path(args.resume))
    else:
        cfg = build_train_config(args)
        run_dir = fit(cfg)
    print(run_dir)
    return 0


# ----------------------------------------------------------------------------- eval / predict


def cmd_eval(args: argparse.Namespace) -> int:
    from convzoo.inference import evaluate_checkpoint

    result = evaluate_checkpoint(args.run, data=args.data, split=args.split, tta=args.tta,
                                 which=args.checkpoint, device=args.device,
                                 batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} on {result['data']} [{result['split']}, "
              f"{result['count']} images]: top1 {result['top1']:.2f}%  top5 {result['top5']:.2f}%  "
              f"loss {result['loss']:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from convzoo.inference import predict_files

    rows = predict_files(args.run, [Path(p) for p in args.images], topk=args.topk,
                         which=args.checkpoint, device=args.device)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            preds = ", ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in row["top"])
            print(f"{row['file']}: {preds}")
    return 0


# ----------------------------------------------------------------------------- listings


def cmd_models(args: argparse.Namespace) -> int:
    from convzoo.models import list_models
    from convzoo.models.info import format_table, model_info

    rows = [model_info(name) for name in list_models()]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    rows = []
    for name in C.list_recipes():
        cfg = C.from_dict(C.load_recipe(name))
        rows.append({"name": name, "source": cfg.source, "model": cfg.model.name,
                     "data": cfg.data.source, "epochs": cfg.stages[-1].epochs if cfg.stages
                     else cfg.train.epochs, "reported": cfg.reported,
                     "description": cfg.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "source", "model", "data", "epochs", "reported"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    return 0


# ----------------------------------------------------------------------------- data / reports


def cmd_pack(args: argparse.Namespace) -> int:
    from convzoo.data.pack import pack

    report = pack(Path(args.src), Path(args.dest), fmt=args.format, resize=args.resize,
                  quality=args.quality, workers=args.workers, skip_bad=args.skip_bad)
    for path, reason in report.skipped[:20]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"... and {len(report.skipped) - 20} more skipped files", file=sys.stderr)
    print(report.summary())
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from convzoo import report

    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "metrics.jsonl").exists():
            raise ConvzooError(f"{r}: not a run directory (no metrics.jsonl)")
    if len(runs) == 1 and args.out is None:
        out = report.plot_curves(runs[0])
    else:
        out = report.plot_runs(runs, Path(args.out or "runs.png"))
    print(out)
    return 0


# ----------------------------------------------------------------------------- bench / export


def cmd_bench(args: argparse.Namespace) -> int:
    from convzoo import bench

    overrides: dict[str, Any] = {}
    if args.batch_size is not None:
        overrides = C.merge(overrides, C.dotted_to_nested("train.batch_size", args.batch_size))
    if args.device is not None:
        overrides = C.merge(overrides, C.dotted_to_nested("train.device", args.device))
    for text in args.set or []:
        overrides = C.merge(overrides, C.parse_override(text))
    rows = bench.bench(args.recipe or [], args.model or [], args.runs or [],
                       overrides=overrides, steps=args.steps, warmup=args.warmup,
                       train_images=args.train_images)
    bench.write_outputs(rows, args.out_md, args.out_csv)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(bench.markdown(rows), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from convzoo.export import export

    result = export(args.run, args.format, out=args.out, which=args.checkpoint,
                    opset=args.opset, check=args.check)
    for note in result.checks:
        print(note, file=sys.stderr)
    print(result.path)
    return 0


# ----------------------------------------------------------------------------- parser


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="shipped recipe name (see `convzoo recipes`) or YAML file")
    p.add_argument("--model", help="model name (see `convzoo models`)")
    p.add_argument("--data", help="cifar10 | cifar100 | digits | path to archive/folder/pack")
    p.add_argument("--epochs", type=int, help="total epochs to train to")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--out", help="parent directory for run directories (default runs/)")
    p.add_argument("--name", help="run directory name")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run (overrides allowed)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.01 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convzoo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (recipe, shortcuts and --set overrides)")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run directory or checkpoint")
    p.add_argument("run", metavar="RUN_DIR|CKPT")
    p.add_argument("--data", help="evaluate on this data instead of the run's")
    p.add_argument("--split", help="split to evaluate (default: the one the run evaluated on)")
    p.add_argument("--tta", help="none | flip | flip_translate | multicrop")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, dest="batch_size",
                   help="eval batch size (default: the run's train.eval_batch_size)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify image files with a trained model")
    p.add_argument("run", metavar="RUN_DIR|CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list models with parameters and FLOPs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list shipped recipes and the results they reproduce")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("pack", help="pack an image folder (or a tar archive of one) or a CIFAR "
                                    "archive into record files")
    p.add_argument("src", help="image-folder tree (train/<class>/*, optional val/ and test/), "
                               "a .tar/.tar.gz of one, or cifar-10/100-python.tar.gz")
    p.add_argument("dest", help="directory to create")
    p.add_argument("--format", default="auto", choices=["auto", "jpeg", "raw"])
    p.add_argument("--resize", type=int, default=0, help="resize the shorter side to N px")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality when re-encoding")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", dest="skip_bad",
                   help="skip unreadable images (counted) instead of failing")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("plot", help="curves for one run, or overlay several")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="output PNG (default: RUN_DIR/curves.png or runs.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bench", help="the neon table: params, memory, s/epoch, images/s, error")
    p.add_argument("--recipe", action="append", metavar="NAME", help="recipe to time (repeatable)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="model to time with default settings (repeatable)")
    p.add_argument("--runs", nargs="+", action="extend", metavar="RUN_DIR",
                   help="finished run directories to tabulate (repeatable)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--batch-size", type=int, dest="batch_size",
                   help="batch size (default: the recipe's train.batch_size)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the recipe's)")
    p.add_argument("--train-images", type=int, dest="train_images",
                   help="images per epoch for s/epoch (default: the data source's train split)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key of every timed row (repeatable)")
    p.add_argument("--out-md", dest="out_md", metavar="FILE", help="also write the Markdown")
    p.add_argument("--out-csv", dest="out_csv", metavar="FILE", help="also write a CSV")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="export a trained model: ONNX (with preprocessing) or "
                                      "safetensors")
    p.add_argument("run", metavar="RUN_DIR|CKPT")
    p.add_argument("--format", required=True, metavar="onnx|safetensors")
    p.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/<which>.<ext>)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--check", action="store_true",
                   help="validate the file (onnx.checker; onnxruntime comparison if installed)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from convzoo.train.logging import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except ConvzooError as e:
        print(f"convzoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convzoo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("CONVZOO_DEBUG"):
            raise
        print(f"convzoo: internal error: {type(e).__name__}: {e} "
              "(set CONVZOO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
