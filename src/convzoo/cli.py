"""The convzoo command line: train, evaluate, export and share image classifiers.

Subcommands: train, sweep, eval, predict, models, recipes, config, pack, plot, bench, export,
card, push, cache.

Every user-input problem surfaces as one line ``convzoo: error: ...`` and exit status 2: bad
flags and values the parser sees (``Parser.error``), and every ConvzooError raised later.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convzoo import __version__, files
from convzoo import config as C
from convzoo.configdoc import commented_yaml, sections_help
from convzoo.errors import ConvzooError
from convzoo.jsonio import dumps_json, loads_json
from convzoo.log import log, setup_logging
from convzoo.outputs import check_output_file, kind_of, write_output
from convzoo.tables import UNLIMITED, WIDTH, fit_table

# The modules a command runs are imported inside it ("# heavy" below): each imports torch
# (5.8 s measured on this machine) or matplotlib (2.1 s), so that --help, --version, recipes and
# config answer without either (tests/test_bad_input.py:
# test_the_light_commands_import_no_torch).

# ----------------------------------------------------------------------------- train


SHORTCUTS = C.SHORTCUTS


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
    """Defaults <- recipe <- CLI shortcuts <- --set overrides, validated
    (``runconfig.train_config``, the Python API's path too)."""
    from convzoo.runconfig import train_config  # heavy

    return train_config(args.recipe, explicit_overrides(args))


def resume_config(args: argparse.Namespace) -> tuple[C.Config, dict[str, Any] | None]:
    """The run's config.yaml with this command's overrides as a new stage and the run's last
    checkpoint (``runconfig.resume_run_config``, the Python API's path too)."""
    from convzoo.runconfig import resume_run_config  # heavy

    if args.recipe:
        raise ConvzooError("--resume continues a run with its own config; drop --recipe (or use "
                           "--resume auto with --name)")
    return resume_run_config(Path(args.resume), explicit_overrides(args))


def cmd_train(args: argparse.Namespace) -> int:
    """The config as ``convzoo.train`` builds it (``runconfig``: ``train_config``,
    ``resume_run_config``, ``auto_run``), then ``fit`` — the one path of both."""
    import yaml

    from convzoo.training.loop import check, describe, fit  # heavy

    ckpt, claim = None, None
    if args.resume == "auto":  # continue the run in train.out/NAME if there is one, else start it
        from convzoo.runconfig import auto_run  # heavy

        cfg, run_dir, continuing, ckpt = auto_run(build_train_config(args),
                                                  explicit_overrides(args))
        resume = run_dir if continuing else None
        claim = None if continuing else run_dir
    elif args.resume:
        cfg, ckpt = resume_config(args)
        resume = Path(args.resume)
    else:
        cfg = build_train_config(args)
        resume = None
    if args.dry_run:  # build everything, train nothing, write nothing
        _, todo, run = check(cfg, resume, ckpt)
        print(yaml.safe_dump(C.to_dict(cfg), sort_keys=False), end="")
        log.info(f"dry run: {resume} has nothing left to train" if run is None
                 else describe(run, todo))
        return 0
    run_dir = fit(cfg, resume, ckpt=ckpt, claim=claim)
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_dir)
    return 0


# ----------------------------------------------------------------------------- sweep


def sweep_keys(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep keys the flags give (``sweeps.SweepConfig``; the file's are below them)."""
    keys: dict[str, Any] = {}
    for attr in ("recipe", "metric", "direction", "trials", "timeout", "val_fraction", "pruner",
                 "prune_warmup", "prune_startup", "sampler", "seed", "study", "storage", "out"):
        value = getattr(args, attr)
        if value is not None:
            keys[attr] = value
    if args.baseline:
        keys["baseline"] = True
    params: dict[str, Any] = {}
    for text in args.param or []:
        key, eq, spec = text.partition("=")
        if not eq or not key.strip():
            raise ConvzooError(f"--param expects KEY=SPEC (e.g. optim.lr=loguniform:1e-3:1), "
                               f"got {text!r}")
        params[key.strip()] = spec.strip()
    if params:
        keys["params"] = params
    fixed: dict[str, Any] = {}
    for text in args.set or []:
        key, eq, _ = text.partition("=")
        node: Any = C.parse_override(text)  # the value typed as --set types it
        for part in key.strip().split("."):
            node = node[part]
        fixed[key.strip()] = node
    if fixed:
        keys["set"] = fixed
    return keys


def cmd_sweep(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from convzoo.sweeps import Interrupted, sweep  # heavy

    try:
        result = sweep(args.file, resume=args.resume, **sweep_keys(args))
    except Interrupted as e:
        print(f"convzoo: sweep {e}; its trial is recorded as failed; continue the sweep with "
              f"convzoo sweep --resume {e.folder}", file=sys.stderr)
        return e.code
    best = result.best
    if args.json:
        print(json.dumps({"study": result.study, "storage": result.storage,
                          "folder": str(result.folder), "metric": result.metric,
                          "direction": result.direction,
                          "best": None if best is None else asdict(best),
                          "trials": [asdict(t) for t in result.trials]}))
    else:
        print(result.folder)
    return 0


# ----------------------------------------------------------------------------- eval / predict


def cmd_eval(args: argparse.Namespace) -> int:
    from convzoo.api import load  # heavy

    clf = load(args.run, which=args.checkpoint, weights=args.weights, device=args.device)
    result = clf.evaluate(args.data, split=args.split, tta=args.tta, batch_size=args.batch_size,
                          report=args.report, topk=args.topk)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun: every rank has the figures
        return 0
    if args.json:
        print(dumps_json(result))
    else:
        print(f"{result['model']} ({result['weights']} weights) on {result['data']} "
              f"[{result['split']}, {result['count']} images]: top1 {result['top1']:.2f}%  "
              f"top5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
        if "report" in result:
            print(f"report (ECE {result['ece']:.2f}%): {result['report']}")
    return 0


PREDICTION_FORMATS = (".csv", ".json")


def write_predictions(rows: list[dict[str, Any]], out: Path,
                      inputs: list[str | Path] | None = None) -> None:
    """``predict --out``: CSV (file, then class and probability per rank) or JSON (the rows),
    by suffix; written atomically, so a failed write leaves an existing file as it was."""
    import csv
    import io

    if out.suffix.lower() == ".json":
        text = dumps_json(rows, indent=1) + "\n"
    else:
        k = max((len(r["top"]) for r in rows), default=0)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", *[f"{c}_{j}" for j in range(1, k + 1) for c in ("pred", "prob")]])
        for row in rows:
            name = row["file"] if row["file"] is not None else row["index"]
            writer.writerow([name, *[v for p in row["top"] for v in (p["class"],
                                                                     f"{p['prob']:.6f}")]])
        text = buffer.getvalue()
    write_output(out, lambda tmp: tmp.write_text(text), option="--out",
                 suffixes=PREDICTION_FORMATS, inputs=inputs or [])


def cmd_predict(args: argparse.Namespace) -> int:
    from convzoo.api import load  # heavy

    out, inputs = None, [args.run, *args.images]
    if args.out:  # checked before any work
        out = check_output_file(args.out, option="--out", suffixes=PREDICTION_FORMATS,
                                inputs=inputs)
    clf = load(args.run, which=args.checkpoint, weights=args.weights, device=args.device)
    rows = clf.predict(args.images, topk=args.topk, batch_size=args.batch_size, tta=args.tta)
    if out is not None:
        write_predictions(rows, out, inputs)
        print(f"{len(rows)} predictions ({clf.weights} weights) -> {out}", file=sys.stderr)
    elif args.json:
        print(dumps_json(rows))
    else:
        for row in rows:
            preds = ", ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in row["top"])
            print(f"{row['file']}: {preds}")
    return 0


# ----------------------------------------------------------------------------- listings


def cmd_models(args: argparse.Namespace) -> int:
    """The zoo's table; named models / patterns (zoo or timm:) with their figures; with
    --all and no names, timm's architectures by name after the table (figures for one cost a
    model build on the meta device, so ask for them by name or pattern)."""
    from convzoo.models import get_entry, list_models  # heavy
    from convzoo.models.info import format_table, model_info  # heavy

    if args.names:
        names: list[str] = []
        for pattern in args.names:
            if not set(pattern) & set("*?["):  # a plain name: unknown ones get suggestions
                get_entry(pattern)
            matched = list_models(pattern, include_timm=args.all)
            if not matched:
                raise ConvzooError(f"no model matches {pattern!r} (see `convzoo models"
                                   f"{'' if args.all else ' --all'}`)")
            names += [n for n in matched if n not in names]
        rows = [model_info(name) for name in names]
        print(dumps_json(rows, indent=2) if args.json else format_table(rows, wide=args.wide))
        return 0
    rows = [model_info(name) for name in list_models()]
    timm_names = list_models("timm:*") if args.all else []
    if args.json:
        print(dumps_json(rows + [{"name": n, "source": "timm"} for n in timm_names], indent=2))
        return 0
    print(format_table(rows, wide=args.wide))
    if timm_names:
        print(f"\ntimm ({len(timm_names)} architectures; `convzoo models timm:NAME` for "
              "parameters and FLOPs):")
        print("\n".join(timm_names))
    return 0


def measured_figures() -> dict[str, Any]:
    """The ledger's figure per recipe (``recipes/measured.json``, made from the run folders under
    the repository's ``results/`` by ``benchmarks/ledger.py tables``)."""
    path = C.RECIPE_DIR / "measured.json"
    return loads_json(path.read_text()) if path.is_file() else {}


def measured_text(m: dict[str, Any] | None) -> str:
    """``90.47% test, 3 seeds 90.1-90.9``; ``not measured`` without a finished run."""
    if not m:
        return "not measured"
    seeds = f", {m['seeds']} seeds {m['min']:.1f}-{m['max']:.1f}" if m["seeds"] > 1 else ""
    return f"{m['top1']:.2f}% {m['split']}{seeds}"


def cmd_recipes(args: argparse.Namespace) -> int:
    figures = measured_figures()
    if args.name:
        return show_recipe(args.name, figures.get(args.name), args)
    rows = []
    for name in C.list_recipes():
        cfg = C.from_dict(C.load_recipe(name))
        rows.append({"name": name, "source": cfg.source, "model": cfg.model.name,
                     "data": cfg.data.source, "epochs": cfg.stages[-1].epochs if cfg.stages
                     else cfg.train.epochs, "reported": cfg.reported,
                     "measured": figures.get(name), "description": cfg.description})
    if args.json:
        print(dumps_json(rows, indent=2))
        return 0
    for r in rows:
        r["measured"] = measured_text(r["measured"])
        r["seed reported"] = r["reported"]
    cols = ["name", "epochs", "seed reported", "measured"]
    if args.wide:
        cols = ["name", "source", "model", "data", "epochs", "seed reported", "measured"]
    print(fit_table([[str(r[c]) for c in cols] for r in rows], cols,
                    UNLIMITED if args.wide else WIDTH, shrink=("seed reported",),
                    right=("epochs",)))
    print("\nconvzoo recipes NAME: one recipe, its runs (--run RUN: yours beside them); "
          "--wide: all")
    return 0


def show_recipe(name: str, measured: dict[str, Any] | None, args: argparse.Namespace) -> int:
    """One recipe: what it is, the seed's figure, convzoo's measured runs, and with ``--run``
    a run of the user's beside them (its figure read from its summary.json)."""
    cfg = C.from_dict(C.load_recipe(name))
    epochs = cfg.stages[-1].epochs if cfg.stages else cfg.train.epochs
    yours = None
    if args.run:
        from convzoo.report import read_summary  # heavy

        run = Path(args.run)
        if not run.is_dir():
            raise ConvzooError(f"--run {run}: no such run directory")
        if not (run / "summary.json").is_file() and not (run / "config.yaml").is_file():
            raise ConvzooError(f"--run {run}: not a run directory (it has no config.yaml or "
                               "summary.json)")
        summary = read_summary(run)
        ran_cfg = C.read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else None
        yours = {"run": str(run), "recipe": ran_cfg.get("name") if ran_cfg else None,
                 "top1": summary.get("top1"), "split": summary.get("split"),
                 "epochs": summary.get("epochs"),
                 "differs": None, "not_compared": "it has no config.yaml"}
        if ran_cfg is not None:
            try:
                yours.update(differs=differences(ran_cfg, name), not_compared=None)
            except ConvzooError as e:  # an older convzoo's config, or a staged run
                yours["not_compared"] = str(e)
    if args.json:
        print(dumps_json({"name": name, "description": cfg.description, "source": cfg.source,
                          "model": cfg.model.name, "epochs": epochs, "reported": cfg.reported,
                          "measured": measured, "yours": yours}, indent=2))
        return 0
    print(f"{name}: {cfg.description}")
    print(f"  source:     {cfg.source}")
    print(f"  model:      {cfg.model.name}, {epochs} epochs")
    print(f"  reported:   {cfg.reported}")
    print(f"  measured:   {measured_text(measured)}")
    if measured:
        print(f"              on {measured['data']}, {measured['machine']}; run folders "
              f"results/{{{','.join(measured['runs'])}}}")
    if yours is not None:
        top1 = yours["top1"]
        other = "" if yours["recipe"] == name else f" (a run of {yours['recipe'] or 'no recipe'})"
        if isinstance(top1, (int, float)):
            line = f"  your run:   {top1:.2f}% ({yours['epochs']} ep, {yours['split']}){other}"
        else:
            line = f"  your run:   not finished (no summary.json yet){other}"
        if measured and isinstance(top1, (int, float)):
            line += f"; {top1 - measured['top1']:+.2f} points against the measured mean"
        print(line)
        differs = yours["differs"]
        if differs is None:
            print(f"  differs:    not compared: {yours['not_compared']}")
        for i, (key, (mine, theirs)) in enumerate((differs or {}).items()):
            print(f"  {'differs:' if i == 0 else '':12}{key} {mine!r} (recipe {theirs!r})")
    return 0


def differences(run_cfg: dict[str, Any], recipe: str) -> dict[str, list[Any]]:
    """What a run trained differently from ``recipe`` as shipped: ``{key: [the run's value, the
    recipe's]}``, less what says how, when and where it ran and its seed (``config.NOT_TRAINED``:
    a comparison over seeds on the ledger's data expects those to differ). ConvzooError when
    they cannot be compared: a config this convzoo no longer reads, or stages that differ from
    the recipe's (a resume with new overrides)."""
    differ = C.differences(C.from_dict(run_cfg), C.from_dict(C.load_recipe(recipe)),
                           C.NOT_TRAINED)
    if "stages" in differ:
        raise ConvzooError("its stages differ from the recipe's (a resume with new "
                           "overrides): see its config.yaml")
    return {k: list(v) for k, v in differ.items()}


def cmd_config(args: argparse.Namespace) -> int:
    """The resolved config as a commented recipe; with ``--where``, each key's origin (the
    defaults, a recipe or one of its bases, a run's config.yaml, or the command line)."""
    layers: list[tuple[str, dict[str, Any]]] = []
    for name in args.recipe:
        run_config = Path(name) / "config.yaml"
        if run_config.is_file():  # a run directory: the config it ran with
            layers.append((f"run {name}", C.read_yaml(run_config)))
        else:
            layers += C.recipe_layers(name)
    overrides = explicit_overrides(args)
    layers.append(("command line", overrides))
    data: dict[str, Any] = {}
    for _, keys in layers:
        data = C.merge(data, keys)
    cfg = C.from_dict(data)
    origins = None
    if args.where:
        origins = {}
        for label, keys in layers:
            for key in C.dotted(keys):
                origins[key] = label
    where = " + ".join(f"{'recipe ' if not Path(n, 'config.yaml').is_file() else 'run '}{n}"
                       for n in args.recipe) or "defaults"
    given = " ".join(argv_tail(args))
    header = [f"convzoo config: {where}" + (f" + {given}" if given else ""),
              "each key: its value, what it means and its valid values; change any with "
              "--set SECTION.KEY=VALUE",
              "this file is a recipe as it is: convzoo train --recipe FILE"]
    if origins is not None:
        header.append("[from ...]: where the value was set (unmarked: convzoo's default)")
    print(commented_yaml(cfg, header, origins), end="")
    return 0


def argv_tail(args: argparse.Namespace) -> list[str]:
    """The shortcut flags and --set overrides the user gave, as typed (for a header line)."""
    out = [f"--{attr.replace('_', '-')} {getattr(args, attr)}" for attr, _ in SHORTCUTS
           if getattr(args, attr, None) is not None]
    return out + [f"--set {t}" for t in args.set or []]


# ----------------------------------------------------------------------------- data / reports


def cmd_pack(args: argparse.Namespace) -> int:
    from convzoo.data.packs.writer import pack  # heavy

    report = pack(args.src, Path(args.dest), fmt=args.format, resize=args.resize,
                  quality=args.quality, workers=args.workers, skip_bad=args.skip_bad,
                  overwrite=args.overwrite)
    for path, reason in report.skipped[:20]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"... and {len(report.skipped) - 20} more skipped files", file=sys.stderr)
    print(report.summary())
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from convzoo import report  # heavy

    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "metrics.jsonl").exists():
            raise ConvzooError(f"{r}: not a run directory (no metrics.jsonl)")
    if len(runs) == 1 and args.out is None:  # the run's own curves.png, redrawn
        out = runs[0] / "curves.png"
        if kind_of(out) not in (None, "file"):
            raise ConvzooError(f"{out}: is {kind_of(out)}; convzoo replaces only a regular file")
        files.atomic_write(out, lambda tmp: report.plot_curves(runs[0], out=tmp))
    else:
        options = dict(option="--out", suffixes=PLOT_FORMATS, inputs=runs)
        out = check_output_file(args.out or "runs.png", **options)
        write_output(out, lambda tmp: report.plot_runs(runs, tmp), **options)
    print(out)
    return 0


PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # what matplotlib's Agg/PDF/SVG write


def cache_folder_arg(args: argparse.Namespace) -> Path:
    """The decode-cache folder of ``--root`` (a ``data.root``, or that cache folder itself);
    without it, the default ``data.root``'s, which may not exist yet."""
    from convzoo.data.caches import NAME, cache_folder

    if args.root is None:
        return cache_folder(C.DataConfig().root)
    root = Path(args.root).expanduser()
    if cache_folder(root).is_dir():
        return cache_folder(root)
    if root.is_dir() and any(NAME.match(p.name) for p in root.iterdir()):
        return root
    raise ConvzooError(f"--root {args.root}: no decode caches there (expected a data.root "
                       "holding cache/, as data.root=... gave train; default ~/.cache/convzoo)")


def shorten_left(text: str, width: int) -> str:
    """`text` in at most `width` characters, keeping its end (a path's most telling part)."""
    return text if len(text) <= width else "..." + text[len(text) - width + 3:]


def geometry_text(g: dict[str, Any] | None) -> str:
    return "?" if not g else f"{g['channels']}x{g['height']}x{g['width']} {g['resize']}"


def cache_source_text(label: dict[str, Any]) -> str:
    return label.get("source") or f"(old cache of '{label.get('name')}')"


def mb_text(mb: float) -> str:
    return f"{mb:,.2f}" if mb < 10 else f"{mb:,.1f}"  # a folder of thumbnails is not "0.0"


def cache_table(entries: list[Any]) -> str:
    """`cache list`'s table within 100 columns: the source path is shortened from the left
    (its end names the folder); numbers are right-aligned."""
    import time

    cols = ["SOURCE", "GEOMETRY", "IMAGES", "MB", "LAST USED", "STATE"]
    body = [[cache_source_text(e.label), geometry_text(e.label["geometry"]),
             f"{e.label.get('images', 0):,}", mb_text(e.mb),
             time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)), e.state]
            for e in entries]
    others = sum(max(len(c), *(len(row[i]) for row in body)) + 2
                 for i, c in enumerate(cols) if i > 0)
    for row in body:
        row[0] = shorten_left(row[0], max(12, WIDTH - others))
    return fit_table(body, cols, WIDTH, right=("IMAGES", "MB"))


def cmd_cache(args: argparse.Namespace) -> int:
    from convzoo.data import caches

    folder = cache_folder_arg(args)
    if args.action == "list":
        entries = caches.scan(folder)
        total = sum(e.mb for e in entries)
        if args.json:
            print(dumps_json({"folder": str(folder), "size_mb": round(total, 3),
                              "caches": [e.public() for e in entries]}, indent=2))
        elif not entries:
            print("no decode caches in " + shorten_left(str(folder), WIDTH - 20))
        else:
            print(cache_table(entries))
            stale = sum(e.stale for e in entries)
            head = f"{len(entries)} cache(s), {mb_text(total)} MB" + (
                f", {stale} stale (`convzoo cache clear --stale`)" if stale else "") + " in "
            print(head + shorten_left(str(folder), WIDTH - len(head)))
        return 0
    source = Path(args.source) if args.source is not None else None
    entries = caches.scan(folder, check_sources=args.stale)
    picked = caches.select(entries, source=source, older_than_days=args.older_than,
                           stale=args.stale, every=args.all)
    if source is not None and not picked and not source.expanduser().exists() \
            and not any(e.label.get("source") == str(source.expanduser().resolve())
                        for e in entries):
        raise ConvzooError(f"--source {args.source}: no such path, and no decode cache of it "
                           "(`convzoo cache list` shows the sources)")
    removed, busy = caches.clear(folder, picked, dry_run=args.dry_run, labels=args.all)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        head = f"{verb} {geometry_text(e.label['geometry'])}  {mb_text(e.mb)} MB  "
        print(head + shorten_left(cache_source_text(e.label), WIDTH - len(head)))
    for e in busy:
        head = "skipped (another process is writing this source's cache)  "
        print(head + shorten_left(cache_source_text(e.label), WIDTH - len(head)))
    mb = sum(e.mb for e in removed)
    print(f"{verb} {len(removed)} cache(s), {mb_text(mb)} MB "
          f"{'to reclaim' if args.dry_run else 'reclaimed'}"
          + (f"; {len(busy)} in use, kept" if busy else ""))
    return 0


# ----------------------------------------------------------------------------- bench / export


def cmd_bench(args: argparse.Namespace) -> int:
    from convzoo import bench  # heavy

    if args.out_md:  # checked before any work
        check_output_file(args.out_md, option="--out-md", suffixes=(".md",))
    if args.out_csv:
        check_output_file(args.out_csv, option="--out-csv", suffixes=(".csv",))

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
        print(dumps_json(rows, indent=2))
    else:
        print(bench.text(rows, wide=args.wide))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from convzoo.export import export  # heavy

    result = export(args.run, args.format, out=args.out, which=args.checkpoint,
                    opset=args.opset, check=args.check, weights=args.weights)
    for note in result.checks:
        print(note, file=sys.stderr)
    print(result.path)
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from convzoo.training.rundir import rebuild_card

    print(rebuild_card(args.run))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from convzoo.push import push

    result = push(args.run, args.repo, private=args.private, token=args.token,
                  dry_run=args.dry_run)
    for note in result.checks:
        print(note, file=sys.stderr)
    if result.url is None:
        print(f"dry run: {len(result.files)} files staged, nothing uploaded: "
              f"{', '.join(result.files)}", file=sys.stderr)
        print(result.folder)
    else:
        print(result.url)
    return 0


# ----------------------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad flag or value raises ConvzooError, which ``main``
    prints as ``convzoo: error: <subcommand>: <problem> (see convzoo <subcommand> --help)``."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        sub = self.prog.removeprefix("convzoo").strip()
        raise ConvzooError(f"{sub + ': ' if sub else ''}{message} (see {self.prog} --help)")


def number_in(interval: str, integer: bool = True) -> Callable[[str], int | float]:
    """An argparse ``type`` for a command-line-only number in ``interval`` (``"[1, inf)"``),
    parsed and range-checked as a config key is (``1_000``, ``1e3`` accepted)."""
    rule = C.In(interval)

    def parse(text: str) -> int | float:
        try:
            value = C.convert(text, int if integer else float, "")
        except ConvzooError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if integer else 'a number'}, got {text!r}") from None
        if not rule.contains(value):
            raise argparse.ArgumentTypeError(f"{value} is outside its valid range {interval}")
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse


def device_arg(text: str) -> str:
    """An argparse ``type`` for ``--device``: the same rule as ``train.device``."""
    if re.fullmatch(C.DEVICE, text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device (expected auto, cpu, cuda, cuda:N or mps)")
    return text


def onnx_opset(text: str) -> int:
    """``--opset``: an ONNX opset the installed onnx package knows (7 is the oldest torch
    exports)."""
    try:
        from onnx.defs import onnx_opset_version

        newest = onnx_opset_version()
    except ImportError:  # export says how to install onnx; the number still has to be sane
        newest = 99
    return number_in(f"[7, {newest}]")(text)  # type: ignore[return-value]


def add_config_args(p: argparse.ArgumentParser) -> None:
    """Shortcuts for the most used keys, and --set for every key (values checked by config)."""
    p.add_argument("--model", help="model name (see `convzoo models`) = model.name")
    p.add_argument("--data", help="cifar10 | cifar100 | digits | path to archive/folder/pack, "
                                  "a .csv/.tsv label file, a Hugging Face dataset (folder, "
                                  ".parquet, hf://datasets/...), WebDataset shards "
                                  "('s-{000..009}.tar') = data.source")
    p.add_argument("--epochs", help="total epochs to train to = train.epochs")
    p.add_argument("--batch-size", dest="batch_size", help="= train.batch_size")
    p.add_argument("--lr", help="peak learning rate = optim.lr")
    p.add_argument("--out", help="parent directory for run directories (default runs/) "
                                 "= train.out")
    p.add_argument("--name", help="run directory name = train.name")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps = train.device")
    p.add_argument("--seed", help="= train.seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.01 (repeatable)")
    p.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="check config, data and model (build everything, train nothing, write "
                        "nothing) and print the resolved config")


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
                   help="ema: the weights' moving average (optim.ema_decay); raw: the trained "
                        "weights; auto (default): ema when the run kept one")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", "--config", action="append", metavar="RECIPE",
                   help="shipped recipe name (see `convzoo recipes`) or YAML file; repeated, "
                        "they merge left to right")
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue this run (overrides start a new stage); auto: continue "
                        "train.out/NAME (--name) if it holds this run, else start it there (a "
                        "fixed command for schedulers and torchrun --max-restarts)")
    add_config_args(p)


def train_epilog() -> str:
    return ("Every config key can be given with --set SECTION.KEY=VALUE (repeatable; the value is "
            "YAML:\n  --set optim.weight_decay=5e-4 --set schedule.milestones=[90,135] "
            "--set train.channels_last=auto).\n"
            "`convzoo config [RECIPE] [--set ...]` prints the resolved config: every key with "
            "its value,\nmeaning and valid range. Precedence: defaults < recipe < shortcut "
            "flags < --set.\nThe sections and their keys:\n" + sections_help())


def installed(package: str) -> str:
    """The installed version of `package` from its metadata (without importing it: a broken
    torchvision still has a version), or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    return (f"convzoo {__version__} (torch {installed('torch')}, torchvision "
            f"{installed('torchvision')}, python {platform.python_version()}) "
            f"from {Path(__file__).resolve().parent}")


# How a torchvision built for another torch fails: its compiled operators do not register
# ("operator torchvision::nms does not exist" on import), or its extension does not load.
_TORCHVISION_MISMATCH = re.compile(
    r"torchvision::\w+|Couldn't load custom C\+\+ ops|torchvision.{0,80}undefined symbol"
    r"|undefined symbol.{0,200}torchvision", re.S)


def environment_fault(e: BaseException) -> str | None:
    """One line for an exception that is a broken installation, not a convzoo bug (None if it
    is not one): a torchvision built for another torch names both versions and the command
    that installs a matching pair (torchvision 0.N+15 goes with torch 2.N, from the same
    index: the local version ``+cu121``/``+cpu`` names it)."""
    if not isinstance(e, RuntimeError | ImportError | OSError) \
            or _TORCHVISION_MISMATCH.search(str(e)) is None:
        return None
    loaded = sys.modules.get("torch")  # its __version__ keeps the build (+cpu, +cu121)
    torch = getattr(loaded, "__version__", None) or installed("torch")
    vision = installed("torchvision")
    release, _, local = str(torch).partition("+")
    parts = release.split(".")
    pair = f"pip install torch=={release}"
    if len(parts) >= 2 and parts[0] == "2" and parts[1].isdigit():
        pair += f" torchvision==0.{int(parts[1]) + 15}.*"
    else:
        pair += " torchvision (the release made for it)"
    if local:
        pair += f" --index-url https://download.pytorch.org/whl/{local}"
    return (f"torch {torch} and torchvision {vision} do not match (torchvision's operators do "
            f"not load: {str(e).strip().splitlines()[0][:100]}); install a matching pair, e.g. "
            f"{pair}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="convzoo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (recipe, shortcuts and --set overrides)",
                       epilog=train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="search hyperparameters with Optuna: each trial a run, "
                                     "judged on the validation split",
                       description="Search hyperparameters with Optuna. Each trial is a run "
                                   "directory SWEEP/trial-NNNN; the objective is a metric on "
                                   "the validation split. Several processes with the same "
                                   "storage and study share the trials.",
                       epilog="The sweep file (YAML) takes the keys the flags name: recipe, set "
                              "(a mapping of dotted keys), params (KEY: SPEC), metric, "
                              "direction, trials, timeout, val_fraction, pruner, prune_warmup, "
                              "prune_startup, sampler, seed, baseline, enqueue (a list of "
                              "parameter mappings to try first), study, storage, out. "
                              "SPEC: uniform:LO:HI | loguniform:LO:HI | int:LO:HI | "
                              "intlog:LO:HI | choice:A,B,... Writes trials.csv, history.png, "
                              "importances.png, intermediate.png into the sweep folder.")
    p.add_argument("file", nargs="?", metavar="SWEEP_FILE", help="a sweep file (YAML)")
    p.add_argument("--recipe", help="the base config: a shipped recipe or YAML file")
    p.add_argument("--param", action="append", metavar="KEY=SPEC",
                   help="a searched key, e.g. optim.lr=loguniform:1e-3:1 or "
                        "augment.policy=choice:none,trivialaugment (repeatable)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a fixed override of the base config for every trial (repeatable)")
    p.add_argument("--metric", choices=["val_top1", "val_top5", "val_loss"],
                   help="the objective on the validation split (default val_top1)")
    p.add_argument("--direction", choices=["auto", "maximize", "minimize"],
                   help="default auto: maximise accuracy, minimise loss")
    p.add_argument("--trials", type=number_in("[0, inf)"),
                   help="trials that finish, over all processes of the study (default 20; "
                        "0 = until --timeout)")
    p.add_argument("--timeout", type=number_in("[0, inf)", integer=False),
                   help="seconds after which this process starts no new trial (default: none)")
    p.add_argument("--val-fraction", dest="val_fraction",
                   type=number_in("[0, 1)", integer=False),
                   help="data.val_fraction of every trial (needed when the data has no val "
                        "split)")
    p.add_argument("--pruner", choices=["none", "median", "asha", "hyperband"],
                   help="end bad trials early on their per-epoch metric (default median)")
    p.add_argument("--prune-warmup", dest="prune_warmup", type=number_in("[0, inf)"),
                   help="epochs a trial trains before it can be pruned (default 1; past a "
                        "schedule's warmup is wiser)")
    p.add_argument("--prune-startup", dest="prune_startup", type=number_in("[0, inf)"),
                   help="median pruner: trials that finish before any is pruned (default 2)")
    p.add_argument("--sampler", choices=["tpe", "random"], help="default tpe")
    p.add_argument("--seed", type=number_in("[0, 4294967295]"), help="sampler seed")
    p.add_argument("--baseline", action="store_true",
                   help="run the base config's own values of the searched keys first")
    p.add_argument("--study", help="study name (default: the sweep file's name, else "
                                   "RECIPE-sweep)")
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the Optuna storage shared by the sweep's processes "
                        "(default sqlite:///OUT/STUDY/study.db; postgresql://... for a cluster)")
    p.add_argument("--out", help="parent of the sweep folder OUT/STUDY (default runs/sweeps)")
    p.add_argument("--resume", metavar="SWEEP_FOLDER",
                   help="continue this sweep (its sweep.yaml, its study); trials a killed "
                        "process left running on this host are recorded as failed first")
    p.add_argument("--json", action="store_true", help="print the trials as JSON")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("eval", help="evaluate a run directory or checkpoint")
    p.add_argument("run", metavar="RUN_DIR|CKPT")
    p.add_argument("--data", help="evaluate on this data instead of the run's")
    p.add_argument("--split", help="split to evaluate (default: the one the run evaluated on)")
    p.add_argument("--tta", choices=C.choices("augment.tta"),
                   help="test-time augmentation (default: the run's augment.tta)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--device", default="auto", type=device_arg, help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--batch-size", type=number_in("[1, inf)"), dest="batch_size",
                   help="eval batch size (default: the run's train.eval_batch_size)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", nargs="?", const=True, metavar="DIR",
                   help="also write the evaluation report (confusion matrix, per-class table, "
                        "calibration, confident mistakes, predictions.csv) into DIR "
                        "(default: RUN_DIR/report); to the run's TensorBoard too")
    p.add_argument("--topk", type=number_in("[1, inf)"), default=5,
                   help="classes per row of the report's predictions.csv (default 5)")
    add_weights_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify image files with a trained model")
    p.add_argument("run", metavar="RUN_DIR|CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR|GLOB",
                   help="image files, folders (their images, recursively) or quoted glob "
                        "patterns ('photos/*.jpg')")
    p.add_argument("--topk", type=number_in("[1, inf)"), default=5,
                   help="classes shown per image (default 5; at most the run's classes)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--device", default="auto", type=device_arg, help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--batch-size", type=number_in("[1, inf)"), dest="batch_size",
                   help="images per forward (default: the run's train.eval_batch_size)")
    p.add_argument("--tta", choices=C.choices("augment.tta"),
                   help="test-time augmentation (default: the run's augment.tta)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--out", metavar="FILE",
                   help="write the predictions to FILE: .csv (file, pred_1, prob_1, ...) or "
                        ".json")
    add_weights_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list models with parameters and FLOPs")
    p.add_argument("names", nargs="*", metavar="NAME|PATTERN",
                   help="models to describe: zoo names, timm:NAME, or shell patterns "
                        "('resnet*', 'timm:convnext_*')")
    p.add_argument("--all", action="store_true",
                   help="include timm's architectures as timm:NAME (needs convzoo[timm])")
    p.add_argument("--wide", action="store_true", help="every column, at full width")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list shipped recipes, the seeds' figures and convzoo's")
    p.add_argument("name", nargs="?", help="one recipe: its figures, and --run beside them")
    p.add_argument("--run", metavar="RUN_DIR", help="with NAME: your run of it, beside the ledger")
    p.add_argument("--wide", action="store_true", help="every column, at full width")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("config", help="print the resolved config: every key with its value, "
                                      "meaning and valid range")
    p.add_argument("recipe", nargs="*", metavar="RECIPE|FILE|RUN_DIR",
                   help="shipped recipes, YAML files or a run directory, merged left to right "
                        "(default: the defaults)")
    p.add_argument("--where", action="store_true",
                   help="mark each key set by a recipe, one of its bases, or the command line")
    add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("pack", help="pack an image folder (or a tar archive of one), a CIFAR "
                                    "archive, a label file, a Hugging Face dataset or "
                                    "WebDataset shards into record files")
    p.add_argument("src", help="image-folder tree (train/<class>/*, optional val/ and test/), "
                               "a .tar/.tar.gz of one, cifar-10/100-python.tar.gz, a .csv/.tsv "
                               "label file, a save_to_disk folder or .parquet/.arrow files, or "
                               "WebDataset shards ('shards-{000..009}.tar', local or a URL)")
    p.add_argument("dest", help="directory to create")
    p.add_argument("--format", default="auto", choices=["auto", "jpeg", "raw"])
    p.add_argument("--resize", type=number_in("[0, 8192]"), default=0,
                   help="resize the shorter side to N px (0 = keep)")
    p.add_argument("--quality", type=number_in("[1, 100]"), default=90,
                   help="JPEG quality when re-encoding (1-100, default 90)")
    p.add_argument("--workers", type=number_in("[0, 1024]"), default=0,
                   help="decoding processes (0 = number of cores)")
    p.add_argument("--skip-bad", action="store_true", dest="skip_bad",
                   help="skip unreadable images (counted) instead of failing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DEST if it exists (the old pack stays until the new one is "
                        "complete)")
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
    p.add_argument("--steps", type=number_in("[1, inf)"), default=20,
                   help="timed training steps (default 20)")
    p.add_argument("--warmup", type=number_in("[0, inf)"), default=3,
                   help="untimed steps first (default 3)")
    p.add_argument("--batch-size", dest="batch_size",
                   help="batch size (default: the recipe's train.batch_size)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the recipe's)")
    p.add_argument("--train-images", type=number_in("[1, inf)"), dest="train_images",
                   help="images per epoch for s/epoch (default: the data source's train split)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key of every timed row (repeatable)")
    p.add_argument("--out-md", dest="out_md", metavar="FILE", help="also write the Markdown")
    p.add_argument("--out-csv", dest="out_csv", metavar="FILE", help="also write a CSV")
    p.add_argument("--wide", action="store_true", help="every column, at full width")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("cache", help="list or clear decode caches (image folders and archives "
                                     "decoded once, shared by every command)",
                       description="Decode caches live in DATA_ROOT/cache (data.root, default "
                                   "~/.cache/convzoo), one per (source content, geometry).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="each cache: source, geometry, images, MB, last use, "
                                        "state (ok / changed / missing source)")
    q.add_argument("--json", action="store_true", help="print the caches as JSON")
    cache_actions = [q]
    q = actions.add_parser("clear", help="remove decode caches (only files convzoo made)",
                           description="Remove the decode caches every given condition picks "
                                       "(at least one), with their labels and locks. Only "
                                       "files carrying convzoo's cache format are removed.")
    q.add_argument("--source", metavar="PATH", help="the caches of this folder or archive")
    q.add_argument("--older-than", type=number_in("[0, inf)", integer=False),
                   dest="older_than", metavar="DAYS", help="caches not used for DAYS days")
    q.add_argument("--stale", action="store_true",
                   help="caches whose source changed or is gone")
    q.add_argument("--all", action="store_true",
                   help="every decode cache, orphan labels and the locks of sources with none")
    q.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="print what would be removed; remove nothing")
    cache_actions.append(q)
    for q in cache_actions:
        q.add_argument("--root", metavar="DATA_ROOT",
                       help="the data.root whose cache/ to use (default ~/.cache/convzoo)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("export", help="export a trained model: ONNX or torch.export (pt2), "
                                      "with preprocessing, or safetensors")
    p.add_argument("run", metavar="RUN_DIR|CKPT")
    p.add_argument("--format", required=True, metavar="onnx|pt2|safetensors")
    p.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/<which>.<ext>)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--opset", type=onnx_opset, help="ONNX opset (default: the exporter's)")
    p.add_argument("--check", action="store_true",
                   help="validate the file: onnx.checker and onnxruntime's logits against "
                        "PyTorch's; pt2: the loaded program's logits against PyTorch's")
    add_weights_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("card", help="rewrite a finished run's model card (RUN_DIR/README.md), "
                                    "e.g. after `convzoo eval RUN --report`",
                       description="Rewrite RUN_DIR/README.md, the model card every finished "
                                   "run writes: model, data and classes, recipe and overrides, "
                                   "the figures with their split, the evaluation report in "
                                   "RUN_DIR/report (when there is one), intended use and "
                                   "limits, and the command that reproduces the run.")
    p.add_argument("run", metavar="RUN_DIR")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("push", help="publish a finished run to a Hugging Face model repository",
                       description="Upload the model card, model.safetensors, config.yaml and "
                                   "an ONNX export (made now and checked), with the pictures "
                                   "the card links, to the Hugging Face model repository "
                                   "REPO (created when missing). Needs huggingface_hub: pip "
                                   "install 'convzoo[hub]'.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("repo", metavar="REPO", help="NAMESPACE/NAME, e.g. your-user/resnet20-digits")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token", help="a Hugging Face token with write access (default: HF_TOKEN "
                                   "or `hf auth login`'s; prefer those: a flag is visible in "
                                   "the process list)")
    p.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="assemble the files in a new temporary folder, print its path and "
                        "upload nothing")
    p.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ConvzooError as e:
        print(f"convzoo: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except ConvzooError as e:
        print(f"convzoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convzoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `convzoo recipes | head`: the reader has gone, so be quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a program stopped by a closed pipe
    except Exception as e:
        # A stop request, answered with a checkpoint. Only a run that imported the stop logic
        # can raise one; looked up, not imported, so that this handler itself never fails on an
        # import (a broken torchvision, say, which it must report).
        preempt = sys.modules.get("convzoo.training.preempt")
        if preempt is not None and isinstance(e, preempt.Preempted):
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"convzoo: {e}", file=sys.stderr)
            return e.exit_status
        if os.environ.get("CONVZOO_DEBUG"):
            raise
        fault = environment_fault(e)
        if fault is not None:
            print(f"convzoo: error: {fault}", file=sys.stderr)
            return 2
        if _lost_peer(e):
            print(f"convzoo: error: another process of this torchrun job failed or was stopped "
                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the run "
                  "directory keeps its last checkpoint", file=sys.stderr)
            return 1
        print(f"convzoo: internal error: {type(e).__name__}: {e} "
              "(set CONVZOO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another rank went away."""
    dist = sys.modules.get("torch.distributed")
    error = getattr(dist, "DistError", None) if dist is not None else None
    return (error is not None and isinstance(e, error)) or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in (
            "Connection closed by peer", "Connection reset by peer", "Gloo connectFullMesh")))


if __name__ == "__main__":
    sys.exit(main())
