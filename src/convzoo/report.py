"""Reports from run directories: metrics CSV, learning-curve PNGs, benchmark tables.

A run directory holds ``metrics.jsonl`` (one JSON object per epoch: epoch, lr, train_loss,
train_top1, eval_loss, eval_top1, eval_top5, eval_split, seconds, images_per_second,
peak_memory_mb, optionally ema_eval_top1 / ema_eval_loss; accuracies in percent),
``summary.json`` and ``config.yaml``. Errors are plotted as ``100 - top1`` (percent).

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch), so they work
headless and inside notebooks alike.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from convzoo import files
from convzoo.errors import ConvzooError

METRICS_FILE = "metrics.jsonl"

# ----------------------------------------------------------------------------- reading


def _metrics_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise ConvzooError(f"no {METRICS_FILE} in {run_dir} (is it a convzoo run directory?)")
    return path


def read_metrics_file(path: Path, text: str) -> list[dict[str, Any]]:
    """The records of metrics.jsonl ``text`` (read from ``path``), in file order.

    A last line without its newline that is not valid JSON is an append cut short by a kill:
    it is skipped. Any other bad line is an error naming ``path`` and the line. Records without
    an ``epoch`` key are skipped.
    """
    lines = text.split("\n")  # a complete file ends with "\n": the last piece is then ""
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # torn: no newline after it
                continue
            raise ConvzooError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ConvzooError(f"{path}:{i}: expected a JSON object")
        if "epoch" in record:
            records.append(record)
    return records


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch records of a run (``run_dir`` or its metrics.jsonl), sorted by epoch.

    When an epoch appears more than once the last record wins. A torn last line (a kill
    mid-append) is skipped; see :func:`read_metrics_file`.
    """
    path = _metrics_path(run_dir)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConvzooError(f"cannot read {path}: {e.strerror}") from None
    by_epoch = {int(r["epoch"]): r for r in read_metrics_file(path, text)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_metrics_csv(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``metrics.csv`` (one row per epoch, every key a column) to ``out``, by default
    atomically beside metrics.jsonl."""
    records = read_metrics(run_dir)
    columns: list[str] = []
    for r in records:
        columns.extend(k for k in r if k not in columns)

    def write(path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(records)

    if out is not None:
        write(Path(out))
        return Path(out)
    target = _metrics_path(run_dir).with_name("metrics.csv")
    files.atomic_write(target, write)
    return target


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a run, or {} when the run has none (still training, or crashed)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConvzooError(f"cannot read {path} ({e}); `convzoo train --resume {Path(run_dir)}` "
                           "rebuilds it for a finished run") from None
    return data if isinstance(data, dict) else {}


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConvzooError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else {}


def _model_name(run_dir: Path) -> str:
    model = read_summary(run_dir).get("model")
    if not model:
        model = (_read_config(run_dir).get("model") or {}).get("name", "")
    return str(model or "")


def _run_label(run_dir: Path) -> str:
    name, model = run_dir.name, _model_name(run_dir)
    return name if not model or model in name else f"{name} ({model})"


# ----------------------------------------------------------------------------- series


def series(records: list[dict[str, Any]], metric: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``metric``; ``X_error`` is derived as ``100 - X_top1``.

    Epochs where the metric is missing (e.g. not evaluated that epoch) are left out.
    """
    key, derive = metric, False
    if metric.endswith("_error"):
        key, derive = metric[: -len("_error")] + "_top1", True
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        xs.append(int(r["epoch"]))
        ys.append(100.0 - float(v) if derive else float(v))
    return xs, ys


def _split_name(records: list[dict[str, Any]]) -> str:
    splits = {r.get("eval_split") for r in records if r.get("eval_split")}
    return splits.pop() if len(splits) == 1 else "eval"


def _best(records: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(epoch, error) of the lowest evaluated error of the weights the run goes by (the EMA's
    when it keeps one, as best.pt does)."""
    xs, ys = series(records, "ema_eval_error")
    if not ys:
        xs, ys = series(records, "eval_error")
    if not ys:
        return None
    i = min(range(len(ys)), key=ys.__getitem__)
    return xs[i], ys[i]


def _zoom_limits(
    curves: list[tuple[list[int], list[float]]], last_epoch: int, also: float | None = None
) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """x range: the last third of training (>= 2 epochs); y range: the values inside it and
    ``also`` (the best error's line, which may come from an earlier epoch: it was drawn out of
    view)."""
    x0 = max(1, math.floor(last_epoch - max(2.0, last_epoch / 3.0)))
    inside = [y for xs, ys in curves for x, y in zip(xs, ys) if x >= x0]
    if inside and also is not None:
        inside.append(also)
    if not inside:
        return (x0 - 0.2, last_epoch + 0.2), None
    lo, hi = min(inside), max(inside)
    pad = 0.1 * (hi - lo) if hi > lo else 0.02 * max(abs(lo), 1e-3)
    return (x0 - 0.2, last_epoch + 0.2), (lo - pad, hi + pad)


def _style(ax: Axes, title: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)


def _line(ax: Axes, xs: list[int], ys: list[float], n_epochs: int, **kw: Any) -> None:
    if xs:
        ax.plot(xs, ys, marker="o" if n_epochs <= 30 else None, markersize=3, **kw)


def _save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=110)
    return out


# ----------------------------------------------------------------------------- plots


def stage_starts(run_dir: str | Path) -> list[int]:
    """Epochs after which a later stage of the run began (config.yaml's ``stages`` that ran)."""
    stages = _read_config(Path(run_dir)).get("stages") or []
    return [int(s["from_epoch"]) for s in stages
            if isinstance(s, dict) and s.get("from_epoch") and s.get("started")]


def _mark_stages(axes: list[Axes], starts: list[int]) -> None:
    """A dotted vertical line where each later stage began (between its epochs e and e+1)."""
    for i, epoch in enumerate(starts):
        for ax in axes:
            ax.axvline(epoch + 0.5, color="grey", linestyle=":", linewidth=1,
                       label=f"stage {i + 2} from epoch {epoch + 1}" if ax is axes[0] else None)


def plot_curves(run_dir: str | Path, out: Path | None = None) -> Path:
    """Draw ``curves.png`` for one run: error, loss, learning rate and a zoomed error panel.

    Where the run had later stages (``--resume`` with overrides, a recipe's ``stages``), a
    dotted line marks where each began. Returns the PNG's path (default ``run_dir/curves.png``).
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ConvzooError(f"{_metrics_path(run_dir)} has no epoch records yet")
    out = Path(out) if out is not None else run_dir / "curves.png"
    n = int(records[-1]["epoch"])
    split = _split_name(records)

    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (ax_err, ax_loss), (ax_lr, ax_zoom) = fig.subplots(2, 2)

    _mark_stages([ax_err, ax_loss, ax_lr], stage_starts(run_dir))
    eval_curves = []
    _line(ax_err, *series(records, "train_error"), n, label="train error", color="C0")
    for metric, label, color in (
        ("eval_error", f"{split} error", "C1"),
        ("ema_eval_error", f"{split} error (EMA)", "C2"),
    ):
        xs, ys = series(records, metric)
        _line(ax_err, xs, ys, n, label=label, color=color)
        _line(ax_zoom, xs, ys, n, label=label, color=color)
        if xs:
            eval_curves.append((xs, ys))
    _style(ax_err, "Error", "error (%)")

    _line(ax_loss, *series(records, "train_loss"), n, label="train loss", color="C0")
    _line(ax_loss, *series(records, "eval_loss"), n, label=f"{split} loss", color="C1")
    _line(ax_loss, *series(records, "ema_eval_loss"), n, label=f"{split} loss (EMA)", color="C2")
    _style(ax_loss, "Cross-entropy loss", "loss")

    xs, ys = series(records, "lr")
    _line(ax_lr, xs, ys, n, color="C3", label="learning rate")
    if any(y > 0 for y in ys):
        ax_lr.set_yscale("log")
    _style(ax_lr, "Learning rate (log scale)", "learning rate")

    best = _best(records)
    xlim, ylim = _zoom_limits(eval_curves, n, best[1] if best is not None else None)
    if best is not None:
        ax_zoom.axhline(
            best[1],
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"best {best[1]:.2f}% (epoch {best[0]})",
        )
    ax_zoom.set_xlim(*xlim)
    if ylim is not None:
        ax_zoom.set_ylim(*ylim)
    _style(
        ax_zoom, f"{split.capitalize()} error, zoomed (epochs {xlim[0] + 0.2:.0f}-{n})", "error (%)"
    )

    title = run_dir.name
    model = _model_name(run_dir)
    if model and model not in title:
        title += f"  [{model}]"
    final = series(records, "eval_error")[1]
    if final and best is not None:
        title += (
            f"\nfinal {split} error {final[-1]:.2f}%  |  "
            f"best {best[1]:.2f}% at epoch {best[0]}  |  {n} epochs"
        )
    fig.suptitle(title, fontsize=13)
    for ax in (ax_err, ax_loss, ax_lr):
        ax.set_xlim(0.5, n + 0.5)
    return _save(fig, out)


_PRETTY = {
    "eval_error": "eval error (%)",
    "train_error": "train error (%)",
    "ema_eval_error": "EMA eval error (%)",
    "eval_loss": "eval loss",
    "train_loss": "train loss",
    "eval_top1": "eval top-1 (%)",
    "eval_top5": "eval top-5 (%)",
    "lr": "learning rate",
}


def plot_runs(run_dirs: list[Path], out: Path, metric: str = "eval_error") -> Path:
    """Overlay ``metric`` of several runs (e.g. all ResNet depths): full and zoomed panels.

    ``metric`` is any metrics.jsonl key, or ``X_error`` for ``100 - X_top1``.
    """
    if not run_dirs:
        raise ConvzooError("plot_runs needs at least one run directory")
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    curves, last = [], 1
    for d, records in runs:
        xs, ys = series(records, metric)
        if not xs:
            raise ConvzooError(f"{_metrics_path(d)}: no values for metric '{metric}'")
        curves.append((d, xs, ys))
        last = max(last, xs[-1])
    pretty = _PRETTY.get(metric, metric)
    if metric.startswith("eval"):
        splits = {_split_name(r) for _, r in runs}
        if len(splits) == 1 and (split := splits.pop()) != "eval":
            pretty = pretty.replace("eval", split, 1)

    fig = Figure(figsize=(13, 5.5), layout="constrained")
    ax_full, ax_zoom = fig.subplots(1, 2)
    for i, (d, xs, ys) in enumerate(curves):
        label = _run_label(d)
        if metric.endswith(("error", "loss")):
            label += f"  (best {min(ys):.2f}, final {ys[-1]:.2f})"
        for ax in (ax_full, ax_zoom):
            _line(ax, xs, ys, last, label=label, color=f"C{i % 10}")
    xlim, ylim = _zoom_limits([(xs, ys) for _, xs, ys in curves], last)
    ax_zoom.set_xlim(*xlim)
    if ylim is not None:
        ax_zoom.set_ylim(*ylim)
    if metric == "lr":
        ax_full.set_yscale("log")
    _style(ax_full, pretty, pretty)
    _style(ax_zoom, f"{pretty}, zoomed (epochs {xlim[0] + 0.2:.0f}-{last})", pretty, legend=False)
    fig.suptitle(f"{pretty} against epoch, {len(curves)} runs", fontsize=13)
    return _save(fig, Path(out))


# ----------------------------------------------------------------------------- benchmark table

# (canonical key, markdown header, accepted aliases); text columns left-aligned, numbers right
BENCH_COLUMNS: list[tuple[str, str, tuple[str, ...]]] = [
    ("model", "model", ()),
    ("source", "source", ("recipe",)),
    ("params", "params", ()),
    ("batch_size", "batch", ("batch",)),
    ("input", "input", ()),
    ("peak_memory_mb", "memory (MiB)", ("memory_mb",)),
    ("memory_kind", "memory kind", ()),
    ("train_images", "images/epoch", ()),
    ("seconds_per_epoch", "s/epoch", ("s_per_epoch",)),
    ("images_per_second", "images/s", ("img_per_s",)),
    ("error", "error (%)", ()),
]
TEXT_COLUMNS = {"model", "source", "input", "memory_kind"}


def bench_value(row: dict[str, Any], key: str, aliases: tuple[str, ...]) -> Any:
    for k in (key, *aliases):
        if row.get(k) is not None and row.get(k) != "":
            return row[k]
    if key == "error" and row.get("top1") is not None:  # accuracy given instead of error
        return 100.0 - float(row["top1"])
    return None


def format_bench_value(key: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key in ("params", "train_images", "batch_size") and isinstance(v, (int, float)):
        return f"{int(v):,}"
    if key in ("peak_memory_mb", "images_per_second") and isinstance(v, (int, float)):
        return f"{v:,.0f}"
    if key == "seconds_per_epoch" and isinstance(v, (int, float)):
        return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
    if key == "error" and isinstance(v, (int, float)):
        return f"{v:.2f}"
    return str(v).replace("|", "\\|")


def bench_table(rows: list[dict[str, Any]]) -> str:
    """The neon-style Markdown table, one line per row dict, '-' where a value is unknown.

    Row keys (see ``BENCH_COLUMNS``): model, source (or recipe), params, batch_size, input,
    peak_memory_mb, memory_kind, train_images, seconds_per_epoch, images_per_second, error
    (percent; or top1, from which error = 100 - top1).
    """
    headers = [h for _, h, _ in BENCH_COLUMNS]
    align = ["---" if k in TEXT_COLUMNS else "---:" for k, _, _ in BENCH_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_bench_value(k, bench_value(row, k, a))
                                       for k, _, a in BENCH_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_bench_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """The benchmark rows as CSV with raw (unformatted) values; extra row keys are appended."""
    columns = [k for k, _, _ in BENCH_COLUMNS]
    known = {k for k, _, a in BENCH_COLUMNS for k in (k, *a)} | {"top1"}
    extra: list[str] = []
    for row in rows:
        extra.extend(k for k in row if k not in known and k not in extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + extra)
        for row in rows:
            values = [bench_value(row, k, a) for k, _, a in BENCH_COLUMNS]
            values += [row.get(k) for k in extra]
            writer.writerow(["" if v is None else v for v in values])
    return path


def summary_row(run_dir: str | Path) -> dict[str, Any]:
    """A bench_table row from a finished run's summary.json and config.yaml."""
    run_dir = Path(run_dir)
    s = read_summary(run_dir)
    if not s:
        raise ConvzooError(f"no summary.json in {run_dir} (has the run finished?)")
    cfg = _read_config(run_dir)
    epochs = s.get("epochs")
    seconds = s.get("train_seconds")
    return {
        "model": s.get("model") or _model_name(run_dir),
        "recipe": cfg.get("name") or "",
        "params": s.get("params"),
        "batch_size": (cfg.get("train") or {}).get("batch_size"),
        "input": s.get("input"),
        "train_images": s.get("train_images_per_epoch"),
        "peak_memory_mb": s.get("peak_memory_mb"),
        "seconds_per_epoch": seconds / epochs if seconds and epochs else None,
        "images_per_second": s.get("images_per_second"),
        "error": 100.0 - float(s["top1"]) if s.get("top1") is not None else None,
    }
