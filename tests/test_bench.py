"""`convzoo bench`: the neon table from timed synthetic steps and from finished runs.

Nothing here asserts a speed: timings only have to be positive numbers.
"""

import csv
import json

import pytest
import torch

from convzoo import config as C
from convzoo.bench import data_facts
from convzoo.cli import main

COLUMNS = ["model", "source", "params", "batch", "input", "memory (MiB)", "memory kind",
           "images/epoch", "s/epoch", "images/s", "error (%)"]


def table_rows(markdown: str) -> list[dict[str, str]]:
    """Markdown table -> one dict per body line, keyed by the header cells."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_model_row_and_files(tmp_path, capsys):
    md, csv_path = tmp_path / "bench.md", tmp_path / "bench.csv"
    assert main(["bench", "--model", "resnet20", "--steps", "2", "--warmup", "1",
                 "--batch-size", "8", "--device", "cpu", "--out-md", str(md),
                 "--out-csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("convzoo bench on ") and "torch " in out.splitlines()[0]
    assert md.read_text().splitlines()[0] == out.splitlines()[0]  # the same header line
    # the terminal's table fits 100 columns: the memory kind and images/epoch all rows share
    # are said once above it; the Markdown file keeps every column
    assert max(len(line) for line in out.splitlines()) <= 100
    assert out.splitlines()[1] == "memory: cpu peak RSS increase; images/epoch: 50,000"
    assert "resnet20" in out.splitlines()[-1] and "269,722" in out.splitlines()[-1]
    (row,) = table_rows(md.read_text())
    assert list(row) == COLUMNS
    assert row["model"] == "resnet20" and row["params"] == "269,722"
    assert row["batch"] == "8" and row["input"] == "3x32x32"
    assert row["images/epoch"] == "50,000"  # CIFAR-sized model: a CIFAR-10 epoch
    assert row["memory kind"].startswith("cpu peak RSS")
    assert row["error (%)"] == "-"

    with csv_path.open() as f:
        (rec,) = list(csv.DictReader(f))
    for key in ["model", "source", "params", "batch_size", "peak_memory_mb",
                "seconds_per_epoch", "images_per_second", "error", "memory_kind", "device"]:
        assert key in rec
    assert int(rec["params"]) == 269_722 and int(rec["batch_size"]) == 8
    ips, spe = float(rec["images_per_second"]), float(rec["seconds_per_epoch"])
    assert ips > 0 and float(rec["peak_memory_mb"]) >= 0
    # s/epoch is 50,000 // 8 steps at the measured rate
    assert spe == pytest.approx((50_000 // 8) * 8 / ips, rel=1e-6)


def test_runs_row_gives_final_error(run_dir, capsys):
    assert main(["bench", "--runs", str(run_dir), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert row["error"] == pytest.approx(100.0 - summary["top1"])
    assert row["params"] == 269_722 == summary["params"]
    assert row["seconds_per_epoch"] == pytest.approx(summary["seconds_per_epoch"])
    assert row["images_per_second"] == pytest.approx(summary["images_per_second"])
    assert row["peak_memory_mb"] == pytest.approx(summary["peak_memory_mb"])

    md = run_dir.parent / "bench-runs.md"
    assert main(["bench", "--runs", str(run_dir), "--out-md", str(md)]) == 0
    (cells,) = table_rows(md.read_text())
    assert cells["error (%)"] == f"{100.0 - summary['top1']:.2f}"
    assert cells["source"] == f"run {run_dir}"


def test_recipe_row_uses_recipe_data(capsys):
    # quickstart: resnet20 on digits at 16x16, batch 64; one timed step only
    assert main(["bench", "--recipe", "quickstart", "--steps", "1", "--warmup", "0",
                 "--device", "cpu", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["source"] == "recipe quickstart" and row["batch_size"] == 64
    assert row["input"] == "3x16x16" and row["num_classes"] == 10
    assert row["train_images"] == 1347  # digits: 1,797 less the 25% test split
    assert row["precision"] == "fp32" and row["device"] == "cpu"


def test_data_facts_without_loading():
    def facts(**data):
        augment = data.pop("augment", {})
        model = data.pop("model", "resnet20")
        return data_facts(C.from_dict({"data": data, "augment": augment,
                                       "model": {"name": model}}))

    f = facts(source="cifar100")
    assert (f.num_classes, f.image_shape, f.train_images) == (100, (3, 32, 32), 50_000)
    f = facts(source="/data/cifar10-jpeg.tar.gz", val_fraction=0.1)
    assert (f.num_classes, f.train_images) == (10, 45_000)
    f = facts(source="/data/imagenet", augment={"random_resized_crop": 224}, model="resnet50")
    assert (f.num_classes, f.image_shape, f.train_images) == (1000, (3, 256, 256), 1_281_167)
    f = data_facts(C.from_dict({"model": {"name": "resnet50"}}), model_default=True)
    assert (f.num_classes, f.image_shape, f.train_images) == (1000, (3, 224, 224), 1_281_167)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--recipe", "no-such-recipe"], "no-such-recipe"),
        (["--model", "resnet21"], "resnet21"),
        (["--runs", "/no/such/run"], "/no/such/run"),
        (["--model", "resnet20", "--set", "optim.lerning_rate=1"], "optim.lerning_rate"),
        ([], "--recipe"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(args, needle, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("convzoo: error:") and needle in lines[0]


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["bench", "--runs", str(tmp_path), "--model", "resnet20"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a run directory" in err and str(tmp_path) in err


def test_bench_batches_go_through_the_training_stage_policy_and_mixing_included():
    """`convzoo bench --recipe` times what training runs: a recipe's policy and mixing are in
    its synthetic batches (soft targets), drawn per batch."""
    from convzoo.bench import DataFacts, synthetic_data
    from convzoo.runtime import resolve_runtime

    cfg = C.apply_overrides(C.from_dict(C.load_recipe("resnet56-cifar10-modern")),
                            {"train": {"batch_size": 16, "device": "cpu"}})
    data = synthetic_data(cfg, DataFacts("cifar10", 10, (3, 32, 32), 50_000),
                          resolve_runtime(cfg.train))
    data.train.steps = 2
    (x1, y1), (x2, y2) = list(data.train)
    assert x1.shape == (16, 3, 32, 32) and y1.shape == (16, 10)
    assert torch.allclose(y1.sum(1), torch.ones(16)) and not torch.equal(x1, x2)
