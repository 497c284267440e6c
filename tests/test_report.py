"""Reports: metrics CSV, curve PNGs and the benchmark table from synthetic run directories."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest

from convzoo.errors import ConvzooError
from convzoo.report import (
    bench_table,
    plot_curves,
    plot_runs,
    read_metrics,
    series,
    stage_starts,
    summary_row,
    write_bench_csv,
    write_metrics_csv,
)

KEYS = [
    "epoch", "lr", "train_loss", "train_top1", "eval_loss", "eval_top1", "eval_top5",
    "eval_split", "seconds", "images_per_second", "peak_memory_mb",
]  # fmt: skip


def make_run(path: Path, model: str, epochs: int, offset: float = 0.0, ema: bool = False) -> Path:
    path.mkdir(parents=True)
    lines = []
    for e in range(1, epochs + 1):
        rec = {
            "epoch": e,
            "lr": 0.1 if e <= epochs // 2 else 0.01,
            "train_loss": 2.0 / e,
            "train_top1": 50.0 + 4 * e,
            "eval_loss": 2.2 / e + offset,
            "eval_top1": 45.0 + 4 * e - offset,
            "eval_top5": 90.0,
            "eval_split": "test",
            "seconds": 1.5,
            "images_per_second": 1000.0 + e,
            "peak_memory_mb": 321.0,
        }
        if ema:
            rec.update(ema_eval_top1=rec["eval_top1"] + 0.5, ema_eval_loss=rec["eval_loss"])
        lines.append(json.dumps(rec))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = {
        "model": model, "params": 272474, "epochs": epochs, "top1": 45.0 + 4 * epochs - offset,
        "top5": 90.0, "loss": 0.3, "train_seconds": 1.5 * epochs, "images_per_second": 1000.0,
        "peak_memory_mb": 321.0,
    }  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.yaml").write_text(
        f"name: neon\nmodel:\n  name: {model}\ntrain:\n  batch_size: 128\n"
    )
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_read_metrics_and_csv(tmp_path):
    run = make_run(tmp_path / "r20", "resnet20", 6, ema=True)
    # a resumed run re-logs epoch 6: the last record wins
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 6, "lr": 0.001, "eval_top1": 99.0}) + "\n")
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["eval_top1"] == 99.0

    out = write_metrics_csv(run)
    assert out == run / "metrics.csv"
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == KEYS + ["ema_eval_top1", "ema_eval_loss"]
    assert len(rows) == 6
    assert float(rows[1]["train_top1"]) == 58.0
    assert rows[2]["eval_split"] == "test"
    assert rows[5]["train_loss"] == ""  # missing in the re-logged record
    assert series(records, "train_error") == ([1, 2, 3, 4, 5], [46.0, 42.0, 38.0, 34.0, 30.0])


def test_series_error_is_100_minus_top1(tmp_path):
    records = read_metrics(make_run(tmp_path / "r", "resnet20", 3))
    assert series(records, "eval_error") == ([1, 2, 3], [51.0, 47.0, 43.0])
    assert series(records, "lr") == ([1, 2, 3], [0.1, 0.01, 0.01])


def test_read_metrics_errors_name_the_file(tmp_path):
    with pytest.raises(ConvzooError, match="no metrics.jsonl"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(ConvzooError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(tmp_path)


def test_plot_curves_writes_a_sane_png(tmp_path):
    run = make_run(tmp_path / "resnet20-cifar10", "resnet20", 12, ema=True)
    out = plot_curves(run)
    assert out == run / "curves.png"
    w, h = png_size(out)
    assert 800 <= w <= 3000 and 600 <= h <= 3000
    assert out.stat().st_size > 20_000  # four panels of lines and text, not an empty canvas
    other = plot_curves(run, tmp_path / "sub" / "c.png")
    assert other == tmp_path / "sub" / "c.png" and png_size(other) == (w, h)
    single = plot_curves(make_run(tmp_path / "one", "vgg", 1))  # one epoch still plots
    assert png_size(single) == (w, h)


def test_plot_runs_overlays_three_runs(tmp_path):
    runs = [make_run(tmp_path / f"resnet{d}", f"resnet{d}", 9, offset=i) for i, d in
            enumerate((20, 32, 56))]  # fmt: skip
    out = plot_runs(runs, tmp_path / "depths.png")
    w, h = png_size(out)
    assert 800 <= w <= 3000 and 300 <= h <= 3000
    out = plot_runs(runs, tmp_path / "loss.png", metric="eval_loss")
    assert png_size(out) == (w, h)
    with pytest.raises(ConvzooError, match="no values for metric 'speed'"):
        plot_runs(runs, tmp_path / "x.png", metric="speed")


def test_bench_table_rows_and_csv(tmp_path):
    rows = [
        summary_row(make_run(tmp_path / "a", "resnet20", 4)),
        {"model": "resnet56", "recipe": "neon", "params": 855770, "batch_size": 128,
         "peak_memory_mb": 860.4, "seconds_per_epoch": 30.0, "images_per_second": 1666.7,
         "top1": 93.69},
        {"model": "googlenet", "recipe": "imagenet", "params": 6998552, "batch": 384},
    ]  # fmt: skip
    table = bench_table(rows)
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| model | source | params | batch | input | memory (MiB) | memory kind | images/epoch "
        "| s/epoch | images/s | error (%) |"
    )
    assert len(lines) == 2 + 3
    assert lines[2] == "| resnet20 | neon | 272,474 | 128 | - | 321 | - | - | 1.50 | 1,000 | 39.00 |"
    assert lines[3] == "| resnet56 | neon | 855,770 | 128 | - | 860 | - | - | 30.0 | 1,667 | 6.31 |"
    assert lines[4] == "| googlenet | imagenet | 6,998,552 | 384 | - | - | - | - | - | - | - |"

    path = write_bench_csv(rows + [{"model": "x", "device": "H100"}], tmp_path / "b" / "t.csv")
    with path.open() as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == [
        "model", "source", "params", "batch_size", "input", "peak_memory_mb", "memory_kind",
        "train_images", "seconds_per_epoch", "images_per_second", "error", "device",
    ]  # fmt: skip
    assert float(got[1]["error"]) == pytest.approx(6.31)
    assert float(got[1]["params"]) == 855770
    assert got[2]["peak_memory_mb"] == "" and got[3]["device"] == "H100"


def test_curves_mark_where_each_stage_began(tmp_path):
    run = make_run(tmp_path / "r", "resnet20", 8)
    assert stage_starts(run) == []
    a = plot_curves(run, tmp_path / "a.png")
    (run / "config.yaml").write_text(
        "model: {name: resnet20}\ntrain: {epochs: 3}\nstages:\n"
        "- {epochs: 6, set: {optim.lr: 0.01}, from_epoch: 3, started: '2026-11-30T10:00:00'}\n"
        "- {epochs: 8, set: {}, from_epoch: 6, started: '2026-11-30T11:00:00'}\n"
        "- {epochs: 9, set: {}, from_epoch: 0, started: ''}\n")  # planned, never ran
    assert stage_starts(run) == [3, 6]
    b = plot_curves(run, tmp_path / "b.png")
    assert png_size(a) == png_size(b) and a.read_bytes() != b.read_bytes()


def test_the_zoom_panel_keeps_the_best_line_in_view():
    """curves.png: the best error, reached before the zoomed window, was drawn out of view; and
    it is the judged weights' best (the EMA's when there is one, as for best.pt)."""
    from convzoo.report import _best, _zoom_limits

    records = [{"epoch": e, "eval_top1": 100 - raw, "ema_eval_top1": 100 - ema}
               for e, raw, ema in [(1, 12.0, 20.0), (2, 40.0, 15.0), (3, 35.0, 14.0),
                                   (4, 33.0, 13.5), (5, 32.0, 13.2), (6, 31.0, 13.1)]]
    assert _best(records) == (6, pytest.approx(13.1))
    raw_only = [{k: v for k, v in r.items() if not k.startswith("ema")} for r in records]
    epoch, error = _best(raw_only)
    assert epoch == 1 and error == pytest.approx(12.0)
    curve = ([r["epoch"] for r in raw_only], [100 - r["eval_top1"] for r in raw_only])
    _, (lo, hi) = _zoom_limits([curve], 6, also=error)
    assert lo < 12.0 < 31.0 < hi  # the best line and the window's values, all in view
