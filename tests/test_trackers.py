"""The loggers of ``train.loggers`` against the real libraries and their real storage: an MLflow
SQLite store read back with ``mlflow.search_runs`` / ``MlflowClient``, W&B offline run files
read back record by record, TensorBoard event files; a preempted and resumed run is one tracked
run; a logger whose library is missing fails before anything is written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from convzoo.cli import main
from convzoo.trackers import wandb_mode
from convzoo.training import loop
from convzoo.training.preempt import EXIT_PREEMPTED

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 360 // 32  # optimizer steps per epoch
TINY = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=360",
        "--batch-size", "32", "--set", "augment.pad=1", "--set", "augment.flip=false",
        "--lr", "0.05", "--set", "train.threads=1", "--set", "train.log_every=4",
        "--device", "cpu"]
ALL = ["--set", "train.loggers=[tensorboard,csv,mlflow,wandb]"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No W&B key anywhere (so wandb.mode=auto is offline), nothing written to the real home."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no ~/.config/wandb


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made (MLflow takes ~8 s to create them), copied
    into each test's train.out, where convzoo's default store is."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def rows_of(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def steps_csv(run: Path) -> list[dict[str, str]]:
    with open(run / "steps.csv") as f:
        return list(csv.DictReader(f))


def logged_steps(epochs: int) -> list[int]:
    """The run's steps logged at log_every=4: steps 4 and 8 of each 11-step epoch."""
    return [e * STEPS + k for e in range(epochs) for k in (4, 8)]


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B run file (``run-<id>.wandb``).

    wandb 0.31 has no Python reader for its files; the framing is LevelDB's log format (after a
    7-byte ``:W&B`` header: 32 KiB blocks of records, each a 7-byte header -- CRC32, length,
    type 1 full / 2 first / 3 middle / 4 last -- then its bytes), and each record is wandb's own
    ``Record`` protobuf, parsed with its own class.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, part = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            break
        part += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def wandb_history(run: Path) -> tuple[str, dict[int, dict[str, Any]], dict[str, Any]]:
    """(run id, {step: logged values}, config) of a run's offline W&B files, all folders."""
    history: dict[int, dict[str, Any]] = {}
    config: dict[str, Any] = {}
    ids = set()
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind in ("run", "config"):  # the run record carries the config given to init
                if kind == "run":
                    ids.add(record.run.run_id)
                updates = record.run.config.update if kind == "run" else record.config.update
                config.update({i.key: json.loads(i.value_json) for i in updates})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in record.history.item}
                history.setdefault(int(items.pop("_step")), {}).update(items)
    assert len(ids) == 1, ids
    return ids.pop(), history, config


@pytest.mark.slow
def test_one_run_logs_steps_epochs_config_summary_and_figures_to_every_logger(
        tmp_path: Path, offline: None, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> None:
    pytest.importorskip("wandb")
    from mlflow import search_runs
    from mlflow.tracking import MlflowClient

    shutil.copy(empty_store, tmp_path / "mlflow.db")

    assert main(["train", *TINY, "--epochs", "2", "--out", str(tmp_path), "--name", "r",
                 *ALL]) == 0
    run = tmp_path / "r"
    rows = rows_of(run)
    summary = json.loads((run / "summary.json").read_text())
    assert [r["step"] for r in rows] == [STEPS, 2 * STEPS]
    ids = json.loads((run / "tracking.json").read_text())

    # csv: every logged step, and metrics.csv
    steps = steps_csv(run)
    assert [int(s["step"]) for s in steps] == logged_steps(2)
    assert [int(s["epoch"]) for s in steps] == [1, 1, 2, 2]
    assert (run / "metrics.csv").is_file()

    # MLflow: the store under train.out, read back as a user would
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert ids["mlflow"]["tracking_uri"] == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what mlflow.search_runs reads
    found = search_runs(experiment_names=["convzoo"], output_format="list",
                        filter_string="params.`optim.lr` = '0.05'")
    client = MlflowClient(uri)
    assert len(found) == 1
    mlrun = client.get_run(found[0].info.run_id)
    assert mlrun.info.run_id == ids["mlflow"]["run_id"]
    assert mlrun.info.run_name == "r" and mlrun.info.status == "FINISHED"
    params = mlrun.data.params
    assert params["train.epochs"] == "2" and params["train.batch_size"] == "32"
    assert params["data.source"] == "digits" and params["augment.flip"] == "False"
    history = client.get_metric_history(mlrun.info.run_id, "step/loss")
    assert [(m.step, m.value) for m in history] == [(int(s["step"]), float(s["loss"]))
                                                    for s in steps]
    lr = client.get_metric_history(mlrun.info.run_id, "step/lr")
    assert [m.value for m in lr] == [float(s["lr"]) for s in steps]
    for key in ("eval_top1", "eval_loss", "train_loss", "lr"):
        epoch_values = client.get_metric_history(mlrun.info.run_id, key)
        assert [(m.step, m.value) for m in epoch_values] == [(r["step"], r[key]) for r in rows]
    assert mlrun.data.metrics["summary/top1"] == summary["top1"]
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"curves.png", "summary.json", "config.yaml"} <= artifacts

    # W&B: offline files in the run directory, the same values at the same steps
    wid, whistory, wconfig = wandb_history(run)
    assert wid == ids["wandb"]["id"] and ids["wandb"]["mode"] == "offline"
    for s in steps:
        assert whistory[int(s["step"])]["step/loss"] == pytest.approx(float(s["loss"]))
    for r in rows:
        assert whistory[r["step"]]["eval_top1"] == pytest.approx(r["eval_top1"])
    assert whistory[2 * STEPS]["curves/_type"] == "image-file"
    assert wconfig["optim.lr"] == 0.05 and wconfig["train.epochs"] == 2

    # TensorBoard: per-step and per-epoch scalars on the same axis, hparams, curves, summary
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("step/loss")] == logged_steps(2)
    assert [e.step for e in events.Scalars("eval_top1")] == [r["step"] for r in rows]
    assert "curves" in events.Tags()["images"]
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    start = HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optim.lr"].number_value == 0.05
    assert hparams["model.name"].string_value == "resnet20"

    # eval --report: its figures join the same MLflow run, W&B run and TensorBoard
    capsys.readouterr()
    assert main(["eval", str(run), "--report", "--json"]) == 0
    report = {a.path for a in client.list_artifacts(mlrun.info.run_id, "report/test")}
    assert {"report/test/confusion_matrix.png", "report/test/reliability.png"} <= report
    assert client.get_run(mlrun.info.run_id).info.status == "FINISHED"
    _, whistory, _ = wandb_history(run)
    assert whistory[2 * STEPS]["report/test/confusion_matrix/_type"] == "image-file"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "report/test/reliability" in events.Tags()["images"]


@pytest.mark.slow
def test_a_preempted_and_resumed_run_is_one_tracked_run(
        tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch,
        empty_store: Path) -> None:
    """SIGTERM at step 15 (epoch 2): exit 75 with last.pt there; the resume continues the same
    MLflow run and W&B run, and every step and epoch is logged once."""
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    shutil.copy(empty_store, tmp_path / "mlflow.db")

    real, calls = loop.set_lr, [0]

    def set_lr(optimizer: Any, lr: float) -> None:
        calls[0] += 1
        if calls[0] == STEPS + 4:
            os.kill(os.getpid(), signal.SIGTERM)
        real(optimizer, lr)

    monkeypatch.setattr(loop, "set_lr", set_lr)
    args = ["train", *TINY, "--epochs", "3", "--out", str(tmp_path), "--name", "r", *ALL]
    assert main(args) == EXIT_PREEMPTED
    monkeypatch.setattr(loop, "set_lr", real)
    run = tmp_path / "r"
    ids = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(ids["mlflow"]["tracking_uri"])
    assert client.get_run(ids["mlflow"]["run_id"]).info.status == "KILLED"

    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "tracking.json").read_text()) == ids
    experiment = client.get_experiment_by_name("convzoo")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [ids["mlflow"]["run_id"]]
    assert runs[0].info.status == "FINISHED"
    rows = rows_of(run)
    epochs = client.get_metric_history(ids["mlflow"]["run_id"], "eval_top1")
    assert [(m.step, m.value) for m in epochs] == [(r["step"], r["eval_top1"]) for r in rows]
    steps = client.get_metric_history(ids["mlflow"]["run_id"], "step/loss")
    assert [m.step for m in steps] == logged_steps(3)  # once each: the stop's step included
    assert [int(s["step"]) for s in steps_csv(run)] == logged_steps(3)

    wid, history, _ = wandb_history(run)  # two offline folders, one run id: `wandb sync`s as one
    assert wid == ids["wandb"]["id"] and len(list((run / "wandb").glob("offline-run-*"))) == 2
    assert sorted(k for k, v in history.items() if "eval_top1" in v) == [r["step"] for r in rows]


def test_a_new_run_that_fails_before_its_first_checkpoint_takes_its_logger_files_along(
        tmp_path: Path, offline: None, capsys: pytest.CaptureFixture) -> None:
    """A run diverging in epoch 1 leaves nothing: steps.csv, tracking.json, the TensorBoard
    events and W&B's offline folder go with the rest of what it wrote."""
    pytest.importorskip("wandb")
    code = main(["train", *TINY, "--epochs", "2", "--out", str(tmp_path), "--name", "r",
                 "--lr", "1e6", "--set", "train.loggers=[tensorboard,csv,wandb]"])
    assert code == 2 and "diverged" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_missing_logger_library_fails_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for module in ("mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        code = main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / module),
                     "--name", "r", "--set", f"train.loggers=[csv,{module}]"])
        err = capsys.readouterr().err
        assert code == 2 and f"pip install 'convzoo[{module}]'" in err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / module / "r").exists()


def test_wandb_mode_auto_is_offline_without_a_key(tmp_path: Path, offline: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert wandb_mode("auto") == "offline"
    (tmp_path / "home").mkdir()
    netrc = tmp_path / "home" / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789\n")
    netrc.chmod(0o600)
    assert wandb_mode("auto") == "online"  # `wandb login` wrote a key
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0123456789")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == "offline" and wandb_mode("online") == "online"
