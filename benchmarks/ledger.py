"""The results ledger: finished runs copied into ``results/``, and every table made from them.

    python benchmarks/ledger.py collect ~/ledger/runs fast94-s0 gnet5-s0   # copy finished runs
    python benchmarks/ledger.py tables           # RESULTS/README ledger sections, recipes' figures
    python benchmarks/ledger.py tables --check   # exit 1 if any differs from the files, or if
                                                 # RESULTS.md's ledger prose quotes a figure
                                                 # no run folder holds

``collect`` copies what a reader needs to check a figure (``config.yaml``, ``summary.json``,
``metrics.jsonl``; for an airbench run its ``result.json`` and printed table), never a
checkpoint, and writes ``ledger.json`` beside them: the machine, convzoo's commit(s), the dates,
the command and the wall time summed over the invocations that ``benchmarks/ledger_runs.py``
recorded (a run continued over several sessions has several).

``tables`` rebuilds, from ``results/`` alone, the part of RESULTS.md and of README.md between
the ``<!-- ledger:begin -->`` and ``<!-- ledger:end -->`` lines and
``src/convzoo/recipes/measured.json`` (the measured column of ``convzoo recipes``). Nothing in
either is typed by hand; ``tests/test_ledger.py`` fails when they differ from what this makes.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger_runs import beside  # noqa: E402

from convzoo import config as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RESULTS_MD = ROOT / "RESULTS.md"
README = ROOT / "README.md"
MEASURED = ROOT / "src" / "convzoo" / "recipes" / "measured.json"
BEGIN, END = "<!-- ledger:begin -->", "<!-- ledger:end -->"

DATA_NAMES = {  # what the data folders of the ledger runs are (../shared/datasets/README.md)
    "cifar10-jpeg": "CIFAR-10, JPEG q75 copy",
    "imagenette": "Imagenette train/ (224 px copy)",
    "digits": "scikit-learn digits",
}
COPIED = ("config.yaml", "summary.json", "metrics.jsonl", "init.json")
COPIED_AIRBENCH = ("result.json", "airbench_stdout.txt")


# ----------------------------------------------------------------------------- collect


def _invocations(runs: Path, name: str) -> list[dict[str, Any]]:
    path = runs / f"{name}.invocations.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _generic(command: str) -> str:
    """A recorded command with this machine's home folder written as ``~``."""
    return command.replace(str(Path.home()), "~")


def collect(runs: Path, names: list[str], results: Path = RESULTS) -> list[Path]:
    """Copy each finished run ``runs/NAME`` into ``results/NAME`` with its ``ledger.json``."""
    written = []
    for name in names:
        src = runs / name
        calls = _invocations(runs, name)
        if not calls:
            raise SystemExit(f"ledger: {runs / (name + '.invocations.jsonl')}: no recorded "
                             "invocation (runs are made by benchmarks/ledger_runs.py)")
        airbench = (src / "result.json").is_file()
        files = COPIED_AIRBENCH if airbench else COPIED
        if not airbench and not (src / "summary.json").is_file():
            raise SystemExit(f"ledger: {src}: not finished (no summary.json)")
        dest = results / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            if (src / f).is_file():
                shutil.copyfile(src / f, dest / f)
        last = calls[-1]
        record = {
            "name": name,
            "kind": "airbench" if airbench else "train",
            "command": _generic(last["command"]),
            "machine": last["machine"],
            "commits": sorted({c["commit"] for c in calls}),
            "started": calls[0]["start"],
            "invocations": len(calls),
            "wall_seconds": round(sum(c["wall_seconds"] for c in calls), 1),
        }
        notes = [c["note"] for c in calls if c.get("note")]
        timed = 0.0 if airbench else json.loads((src / "summary.json").read_text()).get(
            "timed_seconds", 0.0)
        if timed > record["wall_seconds"]:
            # Before the runner rewrote its line each minute, an invocation killed with its
            # session left no line: the run's own timed seconds (training and evaluation,
            # summed over its resumes) are then the nearest measure, and a lower bound.
            notes.append(f"invocations recorded {record['wall_seconds']:.0f} s of wall time, "
                         f"less than the run's own timed_seconds ({timed:.0f} s): some were "
                         "not recorded; wall_seconds is the run's timed_seconds")
            record["wall_seconds"] = round(timed, 1)
        if notes:
            record["notes"] = notes
        (dest / "ledger.json").write_text(json.dumps(record, indent=1) + "\n")
        written.append(dest)
    return written


# ----------------------------------------------------------------------------- read

def protocol(cfg: C.Config, recipe: str | None = None) -> dict[str, str]:
    """How a run's config differs from a recipe as shipped now (``recipe``, by default the
    run's own) in what it trains (``config.NOT_TRAINED`` left out: how, when and where it ran,
    its seed): empty, or only ``data.val_fraction``, when the run is the recipe. Measured
    against today's recipe, not read from the command's ``--set`` flags, so that a tuning run
    whose value a recipe later takes becomes that recipe's row, and the recipe's earlier runs
    become rows with the value they ran with."""
    differ = C.differences(cfg, _shipped(recipe or cfg.name), C.NOT_TRAINED)
    return {k: str(run) for k, (run, _) in sorted(differ.items())}


@functools.cache
def _shipped(recipe: str) -> C.Config:
    """A shipped recipe resolved as a run would resolve it (cached: every run is compared with
    every recipe)."""
    return C.from_dict(C.load_recipe(recipe))


def closest_recipe(cfg: C.Config) -> tuple[str, dict[str, str]]:
    """The shipped recipe a run is shown under, with its :func:`protocol` against it: the one
    it differs from in the fewest keys, its own recipe on a tie. A run made on one recipe with
    overrides that another recipe has since taken is that recipe's run (ResNet-18 first ran as
    ``googlenet_bn-imagenette-5ep --set model.name=resnet18`` before it was a recipe of its
    own), just as a tuning run whose value its recipe takes becomes the recipe's row."""
    own = cfg.name
    best = (own, protocol(cfg, own))
    for name in C.list_recipes():
        if not set(best[1]) - {"data.val_fraction"}:
            break  # the run is its own recipe
        other = protocol(cfg, name)
        if len(other) < len(best[1]):
            best = (name, other)
    return best


def read_results(results: Path = RESULTS) -> list[dict[str, Any]]:
    """One dict per run folder under ``results``: its ledger record, summary and config."""
    import yaml

    rows = []
    for folder in sorted(p for p in results.iterdir() if (p / "ledger.json").is_file()):
        rec = json.loads((folder / "ledger.json").read_text())
        rec["folder"] = folder.name
        if rec["kind"] == "airbench":
            res = json.loads((folder / "result.json").read_text())
            acc, seconds = res["airbench"]["runs"][0]
            rec.update(top1=acc, timed_seconds=seconds, recipe="airbench94 (own code)",
                       data=_data_of(rec["command"]), split="test", epochs=10)
        else:
            summary = json.loads((folder / "summary.json").read_text())
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
            recipe, proto = closest_recipe(C.from_dict(cfg))
            rec.update(
                recipe=recipe,
                data=_data_of(rec["command"]) or DATA_NAMES.get(str(cfg["data"]["source"]),
                                                                 str(cfg["data"]["source"])),
                split=summary["split"], epochs=summary["epochs"], top1=summary["top1"],
                top5=summary.get("top5"), timed_seconds=summary.get("timed_seconds"),
                train_seconds=summary["train_seconds"], reported=_shipped(recipe).reported,
                seed=int(cfg["train"]["seed"]), protocol=proto)
        rows.append(rec)
    return rows


def _data_of(command: str) -> str:
    words = command.split()
    for flag, value in zip(words, words[1:]):
        if flag == "--data":
            return DATA_NAMES.get(Path(value).name, Path(value).name)
    return ""


# ----------------------------------------------------------------------------- tables


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs of one recipe and protocol (its non-runtime overrides), over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] != "train":
            continue
        proto = " ".join(f"{k}={v}" for k, v in sorted(r["protocol"].items()))
        groups.setdefault((r["recipe"], proto), []).append(r)
    return groups


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}%"
    return (f"{statistics.mean(values):.2f}% ({min(values):.2f}-{max(values):.2f}, "
            f"n={len(values)})")


def _protocol_text(proto: str) -> str:
    """``data.val_fraction=0.1 optim.lr=0.1`` as the table shows it: ``val 0.1, optim.lr=0.1``."""
    return ", ".join(p.replace("data.val_fraction=", "val ") for p in proto.split()) or "-"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def markdown(rows: list[dict[str, Any]]) -> str:
    """RESULTS.md's ledger section (between the markers), from the run folders."""
    lines = [BEGIN, ""]
    groups = _group(rows)
    if not groups:
        lines += ["No full-length run has finished yet.", "", END]
        return "\n".join(lines) + "\n"
    lines += [
        "| recipe | protocol overrides | data | epochs | split | top-1: mean (min-max, n) | "
        "anchor | wall per run | machine | run folders |",
        "|---|---|---|---:|---|---:|---|---:|---|---|",
    ]
    for (recipe, proto), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        first = runs[0]
        walls = statistics.mean(r["wall_seconds"] for r in runs)
        machines = sorted({r["machine"] for r in runs})
        folders = ", ".join(f"[{r['folder']}](results/{r['folder']})" for r in runs)
        lines.append(
            f"| `{recipe}` | {_protocol_text(proto)} | "
            f"{first['data']} | {first['epochs']} | {first['split']} | "
            f"{_spread([r['top1'] for r in runs])} | {first['reported'] or '-'} | "
            f"{_hours(walls)} | {'; '.join(machines)} | {folders} |")
    lines.append("")
    lines += _pairs(rows)
    lines.append(END)
    return "\n".join(lines) + "\n"


def _pairs(rows: list[dict[str, Any]]) -> list[str]:
    """The fast94-beside-airbench table: ``airbench94-rN`` ran at the same time as
    ``fast94-sN`` (``ledger_runs.beside``: one thread each on the machine's two cores), so each
    pair shared the machine's state and their times compare."""
    by_name = {r["folder"]: r for r in rows}
    pairs = [(by_name[beside(r["folder"])], r) for r in rows
             if r["kind"] == "airbench" and beside(r["folder"]) in by_name]
    if not pairs:
        return []
    lines = [
        "**cifar10-fast94 beside airbench94's own code**: same JPEG data, same CPU, fp32, run "
        "at the same time on the machine's two cores, one thread each; each side timed as "
        "airbench times itself (data-dependent init + training steps + final TTA evaluation):",
        "",
        "| pair | convzoo `cifar10-fast94` test top-1 (TTA) | its seconds | airbench94.py (CPU "
        "copy) test top-1 (TTA) | its seconds | convzoo / airbench time | run folders |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for ours, theirs in pairs:
        lines.append(
            f"| {ours['folder']} + {theirs['folder']} | {ours['top1']:.2f}% | "
            f"{ours['timed_seconds']:.0f} | {theirs['top1']:.2f}% | "
            f"{theirs['timed_seconds']:.0f} | "
            f"{ours['timed_seconds'] / theirs['timed_seconds']:.2f}x | "
            f"[{ours['folder']}](results/{ours['folder']}), "
            f"[{theirs['folder']}](results/{theirs['folder']}) |")
    ratios = [o["timed_seconds"] / t["timed_seconds"] for o, t in pairs]
    delta = statistics.mean(o["top1"] - t["top1"] for o, t in pairs)
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    lines += ["", f"convzoo's time over airbench's: **{statistics.mean(ratios):.2f}x**"
                  f"{spread} over {len(pairs)} pair(s), accuracy {delta:+.2f} points.", ""]
    return lines


def _recipe_groups(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per recipe, its runs without protocol overrides other than a carved validation split
    (a tuning run with another lr is not the recipe's figure)."""
    return [(recipe, runs) for (recipe, _), runs in sorted(_group(rows).items())
            if set(runs[0]["protocol"]) <= {"data.val_fraction"}]


def measured(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``convzoo recipes``' measured column: each recipe's figure over its seeds."""
    out: dict[str, Any] = {}
    for recipe, runs in _recipe_groups(rows):
        top1 = [r["top1"] for r in runs]
        out[recipe] = {
            "top1": round(statistics.mean(top1), 2), "min": round(min(top1), 2),
            "max": round(max(top1), 2), "seeds": len(runs), "epochs": runs[0]["epochs"],
            "split": runs[0]["split"], "data": runs[0]["data"],
            "machine": sorted({r["machine"] for r in runs})[0],
            "runs": sorted(r["folder"] for r in runs),
        }
    return out


def readme(rows: list[dict[str, Any]]) -> str:
    """README's results section (between the markers): each recipe's figure, short."""
    groups = _recipe_groups(rows)
    if not groups:
        return f"{BEGIN}\n\nNo full-length run has finished yet.\n\n{END}\n"
    lines = [BEGIN, "",
             "`convzoo train --recipe NAME`, trained to the last epoch on the CPU, one thread "
             "(the commands, anchors, tuning runs and run folders are in "
             "[RESULTS.md](RESULTS.md#full-length-runs-the-ledger)):", "",
             "| recipe | data | epochs | top-1: mean (min-max, n) | split | wall per run | "
             "machine |",
             "|---|---|---:|---:|---|---:|---|"]
    for recipe, runs in groups:
        first = runs[0]
        lines.append(
            f"| `{recipe}` | {first['data']} | {first['epochs']} | "
            f"{_spread([r['top1'] for r in runs])} | {first['split']} | "
            f"{_hours(statistics.mean(r['wall_seconds'] for r in runs))} | "
            f"{'; '.join(sorted({r['machine'] for r in runs}))} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


PERCENT = re.compile(r"(?<![\d.])(\d{1,3}\.\d\d)%")
LEDGER_CHAPTER = ("## Full-length runs: the ledger", "## Before the ledger")
README_QUICKSTART = ("## Install, run, test", "## Everyday use")  # its figures are the ledger's


def figures(results: Path = RESULTS) -> set[str]:
    """Every two-decimal percentage the run folders under ``results`` vouch for: each run's
    top-1 and top-5, every top-1/top-5 in its per-epoch metrics, each row's mean over seeds,
    and the anchors in the recipes' ``reported`` lines."""
    from convzoo.report import read_metrics

    rows = read_results(results) if results.is_dir() else []
    values: list[float] = []
    for r in rows:
        values += [v for v in (r["top1"], r.get("top5")) if v is not None]
        if (results / r["folder"] / "metrics.jsonl").is_file():  # an airbench run has none
            for rec in read_metrics(results / r["folder"]):
                values += [v for k, v in rec.items()
                           if k.endswith(("top1", "top5")) and isinstance(v, (int, float))]
    values += [statistics.mean(r["top1"] for r in runs) for runs in _group(rows).values()]
    out = {f"{v:.2f}" for v in values}
    for r in rows:
        out.update(PERCENT.findall(r.get("reported") or ""))
    return out


def unvouched(text: str, results: Path = RESULTS,
              chapter: tuple[str, str] = LEDGER_CHAPTER) -> list[str]:
    """The percentages in ``text`` between the ``chapter`` headings (RESULTS.md's ledger
    chapter, generated table and prose alike; README's quickstart) that no run folder vouches
    for: a figure typed by hand, or one whose run was re-collected."""
    start, stop = chapter
    chapter = text.partition(start)[2].partition(stop)[0]
    known = figures(results)
    return [p + "%" for p in PERCENT.findall(chapter) if p not in known]


def _splice(path: Path, section: str) -> str:
    """``path``'s text with the part between its ledger markers replaced by ``section``."""
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"ledger: {path} has no {BEGIN} line")
    return head + section.rstrip("\n") + tail


def render(results: Path = RESULTS) -> dict[Path, str]:
    """Each generated file's new text: RESULTS.md's and README.md's ledger sections rebuilt,
    and measured.json."""
    rows = read_results(results) if results.is_dir() else []
    return {RESULTS_MD: _splice(RESULTS_MD, markdown(rows)),
            README: _splice(README, readme(rows)),
            MEASURED: json.dumps(measured(rows), indent=1, sort_keys=True) + "\n"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy finished runs into results/")
    c.add_argument("runs", type=Path, help="the folder ledger_runs.py wrote (--out)")
    c.add_argument("names", nargs="+")
    t = sub.add_parser("tables", help="rebuild RESULTS.md's and README.md's ledger sections "
                                      "and measured.json")
    t.add_argument("--check", action="store_true", help="only compare; exit 1 if they differ")
    args = p.parse_args(argv)
    if args.cmd == "collect":
        for dest in collect(args.runs, args.names):
            print(dest)
        return 0
    files = render()
    if args.check:
        stale = [str(f) for f, new in files.items() if not f.is_file() or f.read_text() != new]
        if stale:
            print(f"ledger: out of date: {', '.join(stale)} (python benchmarks/ledger.py "
                  "tables)", file=sys.stderr)
            return 1
        for path, chapter in ((RESULTS_MD, LEDGER_CHAPTER), (README, README_QUICKSTART)):
            typed = unvouched(path.read_text(), chapter=chapter)
            if typed:
                print(f"ledger: {path.name}'s '{chapter[0].lstrip('# ')}' quotes "
                      f"{', '.join(typed)}, which no run folder under results/ holds",
                      file=sys.stderr)
                return 1
        return 0
    for f, new in files.items():
        f.write_text(new)
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
