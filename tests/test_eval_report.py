"""Evaluation reports: confusion matrix, per-class table, ECE + reliability diagram, confident
mistakes, predictions.csv, TensorBoard; the 10- and 100-class layouts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo.errors import ConvzooError
from convzoo.eval_report import (
    ECE_BINS,
    calibration_bins,
    confident_mistakes,
    expected_calibration_error,
    plot_confusion,
    write_report,
)

# CIFAR-100's fine label names (meta file order), for the 100-class layout.
CIFAR100 = (  # noqa: SIM905 (one readable block, not 100 quoted names)
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house "
    "kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle "
    "mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew "
    "skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf "
    "woman worm"
).split()
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def synthetic(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-shaped uint8 images (n, 3, 32, 32), labels, and overconfident softmax outputs of a
    fake classifier that is right about 60% of the time (logits scaled by 3: overconfident)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += rng.normal(2.5, 1.0, n)
    logits *= 3.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return images, labels, probs


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------- numbers


def test_ece_hand_checked():
    """Six predictions, two classes, 15 bins of width 1/15 (bin b = (b/15, (b+1)/15]):

    sample  probs        label  conf  correct  bin (lo, hi]
    0       0.90 0.10    0      0.90  yes      13 (0.8667, 0.9333]
    1       0.95 0.05    1      0.95  no       14 (0.9333, 1.0]
    2       0.62 0.38    0      0.62  yes       9 (0.6000, 0.6667]
    3       0.30 0.70    1      0.70  yes      10 (0.6667, 0.7333]
    4       0.45 0.55    0      0.55  no        8 (0.5333, 0.6000]
    5       0.88 0.12    1      0.88  no       13 (0.8667, 0.9333]

    bin 13: 2 samples, accuracy 1/2, mean confidence (0.90 + 0.88) / 2 = 0.89, gap 0.39
    bin 14: 1 sample, accuracy 0, confidence 0.95, gap 0.95
    bin  9: 1 sample, accuracy 1, confidence 0.62, gap 0.38
    bin 10: 1 sample, accuracy 1, confidence 0.70, gap 0.30
    bin  8: 1 sample, accuracy 0, confidence 0.55, gap 0.55
    ECE = (2 * 0.39 + 0.95 + 0.38 + 0.30 + 0.55) / 6 = 2.96 / 6 = 0.493333...
    (averaging per sample instead of per bin would give (0.10 + 0.88 + 2.18) / 6 = 0.5267.)
    """
    probs = np.array([[0.90, 0.10], [0.95, 0.05], [0.62, 0.38], [0.30, 0.70], [0.45, 0.55],
                      [0.88, 0.12]])
    labels = np.array([0, 1, 0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(2.96 / 6, abs=1e-12)
    bins = calibration_bins(probs, labels)
    assert len(bins) == ECE_BINS == 15
    assert [b["count"] for b in bins] == [0] * 8 + [1, 1, 1, 0, 0, 2, 1]
    assert bins[13]["accuracy"] == 0.5 and bins[13]["confidence"] == pytest.approx(0.89)
    # torch tensors are accepted as well; a perfect, fully confident classifier has ECE 0
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_bin_edges_are_right_closed():
    """A confidence exactly on an edge belongs to the bin that ends there: (lo, hi]."""
    edges = np.linspace(0, 1, 16)
    for b in range(8, 16):  # top-1 confidences of two classes are >= 0.5
        c = edges[b]
        bins = calibration_bins(np.array([[c, 1 - c]]), np.array([0]))
        assert [i for i, r in enumerate(bins) if r["count"]] == [b - 1], b
        nudged = calibration_bins(np.array([[c + 1e-9, 1 - c - 1e-9]]), np.array([0]))
        if b < 15:
            assert [i for i, r in enumerate(nudged) if r["count"]] == [b]


@pytest.mark.parametrize("k,classes", [(10, CIFAR10),
                                         pytest.param(100, CIFAR100, marks=pytest.mark.slow)])
def test_per_class_csv_matches_the_confusion_matrix(tmp_path, k, classes):
    images, labels, probs = synthetic(20 * k, k, seed=k)
    files = write_report(tmp_path, probs, labels, classes, images=images, topk=5)
    matrix = read_csv(files["confusion_matrix_csv"])
    assert matrix[0][1:] == classes and [r[0] for r in matrix[1:]] == classes
    cm = np.array([[int(v) for v in row[1:]] for row in matrix[1:]])
    assert cm.sum() == len(labels)
    rows = read_csv(files["per_class_csv"])
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    per_class = {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}
    for i, c in enumerate(classes):
        precision, recall, f1, support = per_class[c]
        assert support == cm[i].sum() == (labels == i).sum()
        assert recall == pytest.approx(cm[i, i] / cm[i].sum(), abs=1e-6)
        if cm[:, i].sum():
            assert precision == pytest.approx(cm[i, i] / cm[:, i].sum(), abs=1e-6)
        if precision + recall:
            assert f1 == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-5)
    macro = per_class["macro avg"]
    assert macro[1] == pytest.approx(np.mean([per_class[c][1] for c in classes]), abs=1e-6)
    assert per_class["weighted avg"][3] == len(labels)
    # the Markdown table has the same rows
    md = files["per_class_md"].read_text().splitlines()
    assert len(md) == 2 + k + 2 and md[2].startswith(f"| {classes[0]} |")
    # predictions.csv: the predicted column counts are the matrix's column sums
    preds = read_csv(files["predictions_csv"])
    assert preds[0][:4] == ["index", "true", "pred_1", "prob_1"] and preds[0][-1] == "correct"
    assert len(preds[0]) == 2 + 2 * 5 + 1 and len(preds) == len(labels) + 1
    counts = np.zeros(k, dtype=int)
    for row in preds[1:]:
        counts[classes.index(row[2])] += 1
        top = [float(v) for v in row[3:13:2]]
        assert top == sorted(top, reverse=True)  # top-k in order of probability
    assert counts.tolist() == cm.sum(0).tolist()
    summary = json.loads(files["report_json"].read_text())
    assert summary["top1"] == pytest.approx(100 * np.trace(cm) / cm.sum())
    assert summary["ece"] == pytest.approx(100 * expected_calibration_error(probs, labels))
    assert summary["count"] == len(labels) and summary["ece_bins"] == 15
    for name in ("confusion_matrix", "reliability", "confident_mistakes"):
        with Image.open(files[name]) as im:
            assert im.format == "PNG" and min(im.size) > 400


def test_100_class_tick_labels_do_not_overlap():
    """Readable at 100 classes: every class name is on both axes and no two labels overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cm = np.random.default_rng(0).integers(0, 20, (100, 100))
    fig = plot_confusion(cm, CIFAR100)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    for axis, along in ((ax.yaxis, "y"), (ax.xaxis, "x")):
        labels = [t for t in axis.get_ticklabels() if t.get_text()]
        assert [t.get_text() for t in labels] == CIFAR100
        boxes = sorted((b.y0, b.y1) if along == "y" else (b.x0, b.x1)
                       for b in (t.get_window_extent(renderer) for t in labels))
        assert all(a[1] <= b[0] + 0.5 for a, b in zip(boxes, boxes[1:])), along
        assert all(t.get_fontsize() >= 5 for t in labels)


def test_confident_mistakes_order_and_grid(tmp_path):
    probs = np.array([[0.2, 0.8], [0.99, 0.01], [0.4, 0.6], [0.7, 0.3], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 0, 1])
    # wrong: 0 (pred 1 at 0.8), 1 (pred 0 at 0.99), 2 (pred 1 at 0.6); most confident first
    assert confident_mistakes(probs, labels).tolist() == [1, 0, 2]
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)  # grey, CHW, torch
    names = [f"/data/img_{i}.png" for i in range(5)]
    files = write_report(tmp_path, probs, labels, ["cat", "dog"], images=images, names=names,
                         topk=5)
    rows = read_csv(files["predictions_csv"])
    assert rows[0] == ["file", "true", "pred_1", "prob_1", "pred_2", "prob_2", "correct"]
    assert rows[2] == ["/data/img_1.png", "dog", "cat", "0.990000", "dog", "0.010000", "0"]
    assert files["confident_mistakes"].exists()
    no_images = write_report(tmp_path / "plain", probs, labels, ["cat", "dog"])
    assert "confident_mistakes" not in no_images


def test_bad_input_is_one_error_and_writes_nothing(tmp_path):
    images, labels, probs = synthetic(30, 3)
    out = tmp_path / "report"
    write_report(out, probs, labels, ["a", "b", "c"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cases = [
        (probs * 2, labels, ["a", "b", "c"], {}, "rows must sum to 1"),
        (np.log(probs), labels, ["a", "b", "c"], {}, "non-negative"),
        (probs, labels, ["a", "b"], {}, "2 class names for probs with 3 columns"),
        (probs, labels + 3, ["a", "b", "c"], {}, r"labels must lie in \[0, 2\]"),
        (probs, labels[:-1], ["a", "b", "c"], {}, r"labels must be \(30,\)"),
        (probs[0], labels, ["a", "b", "c"], {}, r"probs must be \(N, K\)"),
        (probs, labels, ["a", "b", "c"], {"names": ["x"]}, "1 names for 30 predictions"),
        (probs, labels, ["a", "b", "c"], {"images": np.zeros((30, 5, 5, 5, 5))},
         r"images\[\d+\] has shape \(5, 5, 5, 5\)"),
    ]
    for p, y, classes, kwargs, message in cases:
        with pytest.raises(ConvzooError, match=message) as err:
            write_report(out, p, y, classes, **kwargs)
        assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_one_unit_per_kind_of_number_across_the_json_outputs(run_dir, tmp_path, capsys):
    """Rates are percent everywhere: eval --json, report.json and summary.json agree on top1,
    and ECE is the percent the text prints (it was a fraction beside a percent top-1)."""
    from convzoo.cli import main
    from convzoo.jsonio import loads_json

    report = tmp_path / "report"
    assert main(["eval", str(run_dir), "--report", str(report), "--json"]) == 0
    result = loads_json(capsys.readouterr().out)
    saved = loads_json((report / "report.json").read_text())
    summary = loads_json((run_dir / "summary.json").read_text())
    assert result["top1"] == pytest.approx(saved["top1"]) == pytest.approx(summary["top1"])
    assert result["ece"] == pytest.approx(saved["ece"]) and saved["ece"] > 1  # percent
    assert main(["eval", str(run_dir), "--report", str(report)]) == 0
    assert f"ECE {result['ece']:.2f}%" in capsys.readouterr().out
