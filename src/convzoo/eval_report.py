"""Evaluation a practitioner can act on: where a classifier fails and how far to trust it.

    files = write_report(out_dir, probs, labels, classes, images=images, names=files)

From softmax probabilities (N, K), true labels (N,) and class names it writes:

    confusion_matrix.png   row-normalised (each row: where that class's images went; the
                           diagonal is per-class recall), class names on both axes; sized and
                           lettered by K so 100 classes stay legible; cell values up to 20
    confusion_matrix.csv   the raw counts (rows true, columns predicted), class names as headers
    per_class.csv / .md    precision, recall, F1, support per class, then macro / weighted avg
    reliability.png        reliability diagram (accuracy vs confidence per bin, the gap to the
                           diagonal shaded) over a histogram of the confidences, ECE in the title
    calibration.csv        the bins: range, count, mean confidence, accuracy
    confident_mistakes.png the most confident wrong predictions (only when ``images`` is given),
                           each titled with its true and predicted class and probability
    predictions.csv        file (or index), true class, top-k classes with probabilities
    report.json            count, top-1, top-k, ECE, macro F1, file names (and what was
                           evaluated: data, split, weights, epoch, when the caller says)

Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the
confidence of a prediction is its top-1 probability; the confidences are cut into
``ECE_BINS`` = 15 equal-width bins ((0, 1/15], (1/15, 2/15], ..., (14/15, 1]) and
``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``. Written out here (a few lines
of NumPy) because neither scikit-learn nor torch has the multi-class ECE.

``convzoo eval RUN --report`` also sends the figures, the ECE/top-1 and the per-class table to
the run's loggers (``trackers.py``: TensorBoard, MLflow, W&B). Plots use matplotlib's Agg
canvas directly (no pyplot), like ``convzoo.report``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from convzoo.errors import ConvzooError
from convzoo.files import is_temp_name, write_file
from convzoo.jsonio import dumps_json
from convzoo.outputs import check_output_dir

ECE_BINS = 15
MISTAKES = 25  # cells of the confident-mistakes grid (5 x 5)
VALUES_UP_TO = 20  # print the cell values of confusion matrices with at most this many classes


# ----------------------------------------------------------------------------- numbers


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError):
        raise ConvzooError(f"{name}: not an array ({type(x).__name__})") from None


def check_inputs(probs: Any, labels: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float64 probabilities and (N,) int64 labels, or one clear error."""
    p = _as_numpy(probs, "probs").astype(np.float64, copy=False)
    y = _as_numpy(labels, "labels")
    if p.ndim != 2 or p.shape[0] == 0:
        raise ConvzooError(f"probs must be (N, K) with N >= 1, got shape {tuple(p.shape)}")
    n, k = p.shape
    if len(classes) != k:
        raise ConvzooError(f"{len(classes)} class names for probs with {k} columns")
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ConvzooError(f"labels must be ({n},) integers, got shape {tuple(y.shape)} "
                           f"dtype {y.dtype}")
    if y.min() < 0 or y.max() >= k:
        raise ConvzooError(f"labels must lie in [0, {k - 1}], got {y.min()}..{y.max()}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ConvzooError("probs must be finite and non-negative (softmax probabilities)")
    worst = np.abs(p.sum(axis=1) - 1).max()
    if worst > 1e-3:
        raise ConvzooError(f"probs rows must sum to 1 (softmax of the logits); one is off by "
                           f"{worst:.3g}")
    return p, y.astype(np.int64)


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin (lo, hi]: count, mean confidence, accuracy (NaN if empty)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds conf in (edges[b], edges[b + 1]]; conf = 0 (no softmax gives it) goes to bin 0
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                     "confidence": float(conf[mask].mean()) if count else math.nan,
                     "accuracy": float(correct[mask].mean()) if count else math.nan})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               n_bins: int = ECE_BINS) -> float:
    """ECE (module docstring), in [0, 1]."""
    n = len(labels)
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"])
                     for r in calibration_bins(probs, labels, n_bins) if r["count"]))


def per_class_table(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Rows class / precision / recall / f1 / support, then macro and weighted averages."""
    k = len(classes)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=np.arange(k),
                                                 zero_division=0)
    rows = [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
             "support": int(s[i])} for i, c in enumerate(classes)]
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(labels, preds, labels=np.arange(k),
                                                        average=avg, zero_division=0)
        rows.append({"class": f"{avg} avg", "precision": float(ap), "recall": float(ar),
                     "f1": float(af), "support": int(s.sum())})
    return rows


# ----------------------------------------------------------------------------- figures


MAX_TICK_LABELS = 150  # beyond this many classes, every n-th class is named on the axes


def _font(k: int) -> float:
    """Tick-label size for k classes: 10 pt up to 30 classes, down to 6 pt from 50 on (at
    120 dpi a class gets 20 px, a 6 pt label 10 px)."""
    return float(np.clip(300 / max(k, 1), 6, 10))


def plot_confusion(cm: np.ndarray, classes: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix; the figure grows with K (about 0.17 in per class)."""
    k = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = float(np.clip(0.17 * k + 2.5, 6, 24))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    size = _font(k)
    ticks = range(0, k, math.ceil(k / MAX_TICK_LABELS))  # every class up to 150 classes
    ax.set_xticks(ticks, labels=[classes[i] for i in ticks], rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels=[classes[i] for i in ticks], fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion matrix, rows normalised ({int(cm.sum())} images, "
                 f"top-1 {100 * accuracy:.2f}%)")
    if k <= VALUES_UP_TO:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=size - 1,
                            color="white" if norm[i, j] > 0.5 else "black")
    elif k > 40:  # faint grid every 10 classes, to follow a row across a large matrix
        for t in range(10, k, 10):
            ax.axhline(t - 0.5, color="0.85", lw=0.4)
            ax.axvline(t - 0.5, color="0.85", lw=0.4)
    return fig


def plot_reliability(bins: list[dict], ece: float) -> Figure:
    """Accuracy per confidence bin against the diagonal; the share of images per bin below."""
    fig = Figure(figsize=(6, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = bins[0]["hi"] - bins[0]["lo"]
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    full = [b for b in bins if b["count"]]
    top.bar([(b["lo"] + b["hi"]) / 2 for b in full], [b["accuracy"] for b in full], width=width,
            edgecolor="black", color="tab:blue", label="accuracy")
    for b in full:  # the gap between confidence and accuracy, bin by bin; hatched, unfilled, so
        # an accuracy bar stays blue to its top also where the gap lies inside it (underconfident)
        lo, hi = sorted((b["accuracy"], b["confidence"]))
        top.bar((b["lo"] + b["hi"]) / 2, hi - lo, bottom=lo, width=width, facecolor="none",
                edgecolor="tab:red", hatch="//", linewidth=0.8)
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    gap = Patch(facecolor="none", edgecolor="tab:red", hatch="//",
                label="gap to the bin's mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability diagram: ECE {100 * ece:.2f}% ({len(bins)} bins)")
    handles, _ = top.get_legend_handles_labels()
    # outside the axes: bars start at 0 and may reach 1 anywhere, so any place inside can hide one
    fig.legend(handles=[*handles, gap], loc="outside lower center", ncols=3, fontsize="small")
    total = sum(b["count"] for b in bins)
    bottom.bar(centres, [b["count"] / total for b in bins], width=width, color="0.5",
               edgecolor="black")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("share of images")
    return fig


def _show_image(image: Any, index: int) -> tuple[np.ndarray, str | None]:
    """(C, H, W) or (H, W, C) uint8 / [0, 1] float as something imshow draws, and a cmap."""
    a = _as_numpy(image, f"images[{index}]")
    if a.ndim not in (2, 3) or (a.ndim == 3 and 1 not in (a.shape[0], a.shape[-1])
                                and 3 not in (a.shape[0], a.shape[-1])):
        raise ConvzooError(f"images[{index}] has shape {tuple(a.shape)}; expected (C, H, W) or "
                           "(H, W, C) with 1 or 3 channels")
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:  # floats: [0, 1], or the 0-255 scale as floats
        a = np.clip(a.astype(np.float64), 0, 255) / (255 if a.max() > 1 else 1)
    return a, ("gray" if a.ndim == 2 else None)


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, count: int = MISTAKES) -> np.ndarray:
    """Indices of the wrong predictions, most confident first (at most `count`)."""
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    conf = probs[wrong, preds[wrong]]
    return wrong[np.argsort(-conf, kind="stable")][:count]


def plot_mistakes(indices: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                  classes: Sequence[str], images: Any, names: Sequence[str] | None) -> Figure:
    """Grid of the given mistakes: image, 'true: A', 'pred: B (97.1%)', file or index."""
    cols = min(5, max(len(indices), 1))
    rows = max(math.ceil(len(indices) / cols), 1)
    fig = Figure(figsize=(2.4 * cols, 2.75 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    if not len(indices):
        axes[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    for ax, i in zip(axes, indices):
        pixels, cmap = _show_image(images[int(i)], int(i))
        top = 255 if pixels.dtype == np.uint8 else 1.0  # grey images: true intensities
        ax.imshow(pixels, cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
        pred = int(probs[i].argmax())
        label = Path(str(names[i])).name if names is not None else f"#{i}"
        ax.set_title(f"true: {classes[labels[i]]}\npred: {classes[pred]} "
                     f"({100 * probs[i, pred]:.1f}%)\n{label}", fontsize=8)
    fig.suptitle(f"most confident mistakes ({len(indices)} shown)")
    return fig


# ----------------------------------------------------------------------------- files


REPORT_FILES = frozenset({
    "confusion_matrix.csv", "per_class.csv", "per_class.md", "calibration.csv", "predictions.csv",
    "confusion_matrix.png", "reliability.png", "confident_mistakes.png", "report.json"})


def is_report_dir(path: Path) -> bool:
    """A folder holding only files of an evaluation report (a complete one, or one a kill cut
    short: its temp files too): ``eval --report`` may write into it again."""
    try:
        names = [e.name for e in os.scandir(path)]
    except OSError:
        return False
    return all(n in REPORT_FILES or is_temp_name(n) for n in names)


def _put(path: Path, fill: Any) -> Path:
    """Every report file is written atomically (temp + rename): never through a link or into
    a device, and a failed write leaves the previous report's file as it was."""
    write_file(path, fill)
    return path


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return _put(path, lambda tmp: fig.savefig(tmp, dpi=120))


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    def fill(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    return _put(path, fill)


def _markdown(rows: list[dict]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
              f"{r['support']} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    *,
    images: Any = None,
    names: Sequence[str] | None = None,
    topk: int = 5,
    about: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the evaluation report (module docstring) into `out_dir`; returns {name: path}.

    probs: (N, K) softmax probabilities (numpy or torch). labels: (N,) true class indices.
    images: anything indexable by sample (``images[i]`` -> (C, H, W) or (H, W, C), uint8 0-255
    or float 0-1: a tensor, array, or a dataset view that decodes on demand); needed only for
    the mistakes grid, and only the shown ones are read. names: per-sample file names for
    predictions.csv and the grid (default: the index). about: what was evaluated (data,
    split, weights, epoch), recorded in report.json (the model card reads it). Inputs are
    checked before anything is written.
    """
    p, y = check_inputs(probs, labels, classes)
    n, k = p.shape
    if names is not None and len(names) != n:
        raise ConvzooError(f"{len(names)} names for {n} predictions")
    if images is not None and len(images) != n:
        raise ConvzooError(f"{len(images)} images for {n} predictions")
    if topk < 1:
        raise ConvzooError(f"topk must be >= 1, got {topk}")
    classes = [str(c) for c in classes]
    preds = p.argmax(axis=1)
    cm = confusion_matrix(y, preds, labels=np.arange(k))  # (K, K) counts, rows true
    table = per_class_table(y, preds, classes)
    bins = calibration_bins(p, y)
    ece = expected_calibration_error(p, y)
    kk = min(topk, k)
    order = np.argsort(-p, axis=1, kind="stable")[:, :kk]  # (N, kk) class indices
    # Figures first: a bad image fails here, before any file is written.
    figures = {"confusion_matrix": plot_confusion(cm, classes),
               "reliability": plot_reliability(bins, ece)}
    if images is not None:
        wrong = confident_mistakes(p, y)
        figures["confident_mistakes"] = plot_mistakes(wrong, p, y, classes, images, names)

    out = check_output_dir(out_dir, option="report folder", what="an evaluation report",
                           is_ours=is_report_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvzooError(f"cannot create report directory {out}: {e.strerror}") from None
    files: dict[str, Path] = {}
    files["confusion_matrix_csv"] = _write_csv(
        out / "confusion_matrix.csv", ["true \\ predicted", *classes],
        [[c, *map(int, row)] for c, row in zip(classes, cm)])
    files["per_class_csv"] = _write_csv(
        out / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
        [[r["class"], f"{r['precision']:.6f}", f"{r['recall']:.6f}", f"{r['f1']:.6f}",
          r["support"]] for r in table])
    markdown = _markdown(table)
    files["per_class_md"] = _put(out / "per_class.md", lambda tmp: tmp.write_text(markdown))
    files["calibration_csv"] = _write_csv(
        out / "calibration.csv", ["lo", "hi", "count", "confidence", "accuracy"],
        [[f"{b['lo']:.6f}", f"{b['hi']:.6f}", b["count"],
          "" if not b["count"] else f"{b['confidence']:.6f}",
          "" if not b["count"] else f"{b['accuracy']:.6f}"] for b in bins])
    header = ["file" if names is not None else "index", "true"]
    for j in range(1, kk + 1):
        header += [f"pred_{j}", f"prob_{j}"]
    header.append("correct")
    rows = []
    for i in range(n):
        row: list[Any] = [names[i] if names is not None else i, classes[y[i]]]
        for c in order[i]:
            row += [classes[c], f"{p[i, c]:.6f}"]
        rows.append([*row, int(preds[i] == y[i])])
    files["predictions_csv"] = _write_csv(out / "predictions.csv", header, rows)
    for name, fig in figures.items():
        files[name] = _save(fig, out / f"{name}.png")

    topk_acc = float(np.mean([y[i] in order[i] for i in range(n)]))
    summary = {**(about or {}), "count": n, "classes": k, "top1": float((preds == y).mean() * 100),
               f"top{kk}": topk_acc * 100, "ece": ece * 100, "ece_bins": ECE_BINS,
               "macro_f1": table[-2]["f1"], "files": {key: p_.name for key, p_ in files.items()}}
    text = dumps_json(summary, indent=2) + "\n"
    files["report_json"] = _put(out / "report.json", lambda tmp: tmp.write_text(text))
    return files
