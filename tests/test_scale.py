"""Scale-out that survives a cluster, on CPU with gloo: a stop signal to one rank stops every
rank at one step, checkpointed, and the resume is bit-identical; a rank SIGKILLed under
``torchrun --max-restarts`` comes back in the same run directory with the same final weights;
two torchrun agents as two nodes on loopback; distributed evaluation equal to one process for
every eval size; SyncBatchNorm and gradient accumulation under DDP; the global-batch rule."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scale_steps import one_epoch
from torch import nn

from convzoo import config as C
from convzoo.api import load
from convzoo.data.dataset import Split
from convzoo.data.loading.loaders import ResidentLoader
from convzoo.errors import ConvzooError
from convzoo.evaluate import evaluate
from convzoo.training.distributed import check_global_batch
from convzoo.training.preempt import EXIT_PREEMPTED

pytestmark = pytest.mark.slow  # torchrun: every test starts processes

HERE = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
# 256 digits at 8 px, global batch 32 over 2 ranks: 8 steps per epoch. Stochastic depth makes
# the DDP graph dynamic and uses each rank's global RNG inside the epoch.
ARGS = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=256",
        "--batch-size", "32", "--epochs", "2", "--seed", "2", "--device", "cpu", "--lr", "0.05",
        "--set", "train.loggers=[]", "--set", "train.threads=1",
        "--set", "optim.ema_decay=0.9", "--set", "model.kwargs={drop_path: 0.3}",
        "--set", "augment.translate=1"]
STEPS = 8


def torchrun(*args: str, timeout: int = 240, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, **kw)


def worker(*convzoo: str, signal_at: str) -> list[str]:
    """The arguments that run ``convzoo ...`` in each torchrun worker, rank:step:signal sending
    itself that signal during that step (tests/dist_worker.py)."""
    return [str(HERE / "dist_worker.py"), signal_at, "--", *convzoo]


def last(run: Path) -> tuple[int, int]:
    c = torch.load(run / "last.pt", weights_only=True)
    return c["epoch"], c.get("step", 0)


def assert_same_weights(run: Path, ref: Path) -> None:
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(ref / "last.pt", weights_only=True)
    cb = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.equal(v, cb["model"][k]) for k, v in ca["model"].items())
    timing = {"seconds", "images_per_second", "peak_memory_mb", "eval_seconds"}
    rows = [[{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (ref, run)]
    assert rows[0] == rows[1]


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted two-process run."""
    out = tmp_path_factory.mktemp("scale")
    proc = torchrun("--standalone", "--nproc_per_node=2", "-m", "convzoo", "train", *ARGS,
                    "--out", str(out), "--name", "ref")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "ref"


def test_a_signal_to_one_rank_stops_every_rank_at_one_step_and_resume_is_exact(
        ref: Path, tmp_path: Path) -> None:
    """SIGTERM to rank 1 during step 3: both ranks agree, one step later, to stop after step 4
    (last.pt at epoch 0, step 4); resumed, SIGUSR1 to rank 0 during the epoch's last step:
    the stop lands on the epoch-1 checkpoint; resumed again: the uninterrupted run's weights
    and metrics."""
    run = tmp_path / "r"
    common = ["--standalone", "--nproc_per_node=2"]
    proc = torchrun(*common, *worker("train", *ARGS, "--out", str(tmp_path), "--name", "r",
                                     signal_at="1:3:SIGTERM"))
    assert proc.returncode != 0 and "stopped by SIGTERM in epoch 1 after step 4/8" in proc.stderr
    assert f"exitcode  : {EXIT_PREEMPTED}" in proc.stderr or proc.stderr.count("exitcode") == 0
    assert last(run) == (0, 4)
    proc = torchrun(*common, *worker("train", "--resume", str(run), signal_at="0:4:SIGUSR1"))
    assert "stopped by SIGUSR1 after epoch 1" in proc.stderr, proc.stderr[-3000:]
    assert last(run) == (1, 0)
    proc = torchrun(*common, "-m", "convzoo", "train", "--resume", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(run, ref)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def rank_pid(agent: int, rank: int) -> int | None:
    for pid in children(agent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def test_a_rank_killed_under_max_restarts_finishes_in_the_same_run_directory(
        ref: Path, tmp_path: Path) -> None:
    """`--resume auto --name r` is the fixed command; rank 1 is SIGKILLed once a mid-epoch
    checkpoint exists; torchrun restarts the workers, which continue from it in runs/r."""
    out = tmp_path / "runs"
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "--max-restarts=2", "-m", "convzoo",
           "train", *ARGS, "--out", str(out), "--name", "r", "--resume", "auto",
           "--set", "train.checkpoint_every_steps=3"]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV)
    run, deadline = out / "r", time.monotonic() + 180
    while time.monotonic() < deadline and agent.poll() is None:
        try:
            if last(run) >= (0, 3):
                break
        except Exception:
            pass
        time.sleep(0.05)
    victim = rank_pid(agent.pid, 1)
    assert victim is not None and agent.poll() is None
    os.kill(victim, signal.SIGKILL)
    _, err = agent.communicate(timeout=240)
    assert agent.returncode == 0, err[-3000:]
    assert "internal error" not in err  # a lost peer is said as such
    assert [p.name for p in out.iterdir()] == ["r"]  # no r-2: the same run directory
    assert re.search(r"continuing .*/r from the (checkpoint in epoch \d+ after step|epoch-1)",
                     err), err[-3000:]
    assert_same_weights(run, ref)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_prepare_per_node_and_write_once(tmp_path: Path) -> None:
    """Two torchrun agents (c10d rendezvous on 127.0.0.1) of 2 processes each: an image folder
    decoded once per node into that node's own data.root (the local-data alternative), one run
    directory written once, and its per-epoch eval figures (4 ranks, each its shard) equal
    one process evaluating the checkpoint."""
    tree = tmp_path / "tree"
    g = np.random.default_rng(0)
    for split, n in (("train", 96), ("test", 37)):  # 37 test images over 4 ranks: uneven
        for i in range(n):
            folder = tree / split / f"c{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                folder / f"{i}.png")
    port = free_port()
    agents = []
    for node in (0, 1):
        cmd = [*TORCHRUN, "--nnodes=2", "--nproc_per_node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=twonodes", "--local-addr=127.0.0.1",
               "-m", "convzoo", "train", "--data", str(tree), "--batch-size", "16",
               "--set", "train.eval_batch_size=4", "--epochs", "2", "--device", "cpu",
               "--out", str(tmp_path / "runs"), "--name", "n", "--set", "train.threads=1",
               "--set", "train.loggers=[]", "--set", f"data.root={tmp_path / f'node{node}'}"]
        agents.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=ENV))
    errs = [a.communicate(timeout=240)[1] for a in agents]
    assert all(a.returncode == 0 for a in agents), errs[0][-2000:] + errs[1][-2000:]
    for node in (0, 1):  # each node decoded the folder into its own data root, once
        caches = list((tmp_path / f"node{node}").rglob("*.pt"))
        assert len(caches) == 1, caches
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["n"]
    run = tmp_path / "runs" / "n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert torch.load(run / "last.pt", weights_only=True)["train_images"] == 2 * 96
    alone = load(run, device="cpu").evaluate(data_root=str(tmp_path / "node0"))
    assert (alone["top1"], alone["loss"], alone["count"]) == (rows[-1]["eval_top1"],
                                                              rows[-1]["eval_loss"], 37)


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> dict[int, Path]:
    """tests/dist_checks.py under torchrun with 2 and with 3 processes."""
    out = {}
    for world in (2, 3):
        folder = tmp_path_factory.mktemp(f"checks{world}")
        proc = torchrun("--standalone", f"--nproc_per_node={world}", str(HERE / "dist_checks.py"),
                        str(folder), str(run_dir))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[world] = folder
    return out


def test_distributed_eval_equals_one_process_for_every_size(checks: dict[int, Path]) -> None:
    """Eval sizes 1-23 (most not divisible by 2 or 3), batch sizes 1-5, with and without TTA
    views: every figure equals one process's to the last bit."""
    for world, folder in checks.items():
        figures = torch.load(folder / f"eval-{world}.pt", weights_only=False)
        assert len(figures) == 23 * 4 * 2
        for (n, batch, tta), got in figures.items():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 7))
            g = torch.Generator().manual_seed(n)
            split = Split(torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g),
                          torch.randint(0, 7, (n,), generator=g))
            views = (lambda x: [x, x.flip(3)]) if tta else None
            alone = evaluate(model, ResidentLoader(split, batch), device=torch.device("cpu"),
                             views=views)
            assert got == alone, (world, n, batch, tta)


def test_convzoo_eval_under_torchrun_equals_one_process(checks: dict[int, Path],
                                                        run_dir: Path) -> None:
    alone = load(run_dir, device="cpu").evaluate()
    assert alone["count"] % 3 and alone["count"] % 2 == 0  # 200 test images
    for world, folder in checks.items():
        got = json.loads((folder / f"cli-eval-{world}.json").read_text())
        assert got == alone, world


def test_a_global_batch_that_does_not_divide_is_one_line_on_every_rank(
        checks: dict[int, Path]) -> None:
    for world, folder in checks.items():
        for rank in range(world):
            code, *lines = (folder / f"divisible-{world}-{rank}.txt").read_text().splitlines()
            assert code == "2" and len(lines) == 1, lines
            assert re.fullmatch(
                rf"convzoo: error: train.batch_size={10 * world + 1} is the global batch .* must "
                rf"divide by {world} processes = {world} \(nearest: {10 * world} or "
                rf"{11 * world}\)", lines[0]), lines[0]
        assert not (folder / "runs").exists() or not any((folder / "runs").iterdir())


def test_check_global_batch_for_every_world_size_and_accumulation() -> None:
    for batch, world, accum in ((b, w, a) for b in range(1, 40) for w in range(1, 9)
                                for a in (1, 2, 3)):
        train = C.TrainConfig(batch_size=batch, accum_steps=accum)
        if batch % (world * accum):
            with pytest.raises(ConvzooError, match=f"train.batch_size={batch} is the global"):
                check_global_batch(train, world)
        else:
            check_global_batch(train, world)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest relative difference of the float tensors of two state dicts."""
    return max(((x - b[k]).abs().max() / x.abs().max().clamp_min(1e-12)).item()
               for k, x in a.items() if x.is_floating_point())


def test_sync_bn_and_accumulation_under_ddp_match_one_process(checks: dict[int, Path]) -> None:
    """Two ranks x 16 images with SyncBatchNorm train like one process on batches of 32 (BN
    statistics over the global batch); without it they do not. A BN-free model (cnn, dropout
    off) with 2 processes x 2 micro-batches of 32 makes the update of one batch of 128."""
    states = torch.load(checks[2] / "steps-2.pt", weights_only=True)
    alone = one_epoch("resnet20", 32, limit=64)  # 2 steps: little time for noise to grow
    assert close(states["sync"], alone) < 1e-4
    assert close(states["nosync"], alone) > 100 * close(states["sync"], alone)
    accum = one_epoch("cnn", 128)
    assert close(states["accum2"], accum) < 1e-5


def test_accumulation_in_one_process_is_one_batch_within_float_tolerance() -> None:
    whole = one_epoch("cnn", 128)
    for accum in (2, 4):
        assert close(one_epoch("cnn", 128, accum_steps=accum), whole) < 1e-5
    assert close(one_epoch("cnn", 64), whole) > 1e-3  # a real difference is seen


def test_lr_scaling_follows_the_global_batch_not_the_world_size() -> None:
    from convzoo.training.schedule import peak_lr

    for batch, base, rule in ((256, 256, "linear"), (1024, 256, "linear"), (64, 256, "sqrt"),
                              (1024, 0, "linear")):
        optim = C.OptimConfig(lr=0.1, lr_base_batch=base, lr_scaling=rule)
        expected = 0.1 if not base else 0.1 * (batch / base if rule == "linear"
                                               else (batch / base) ** 0.5)
        assert peak_lr(optim, batch) == pytest.approx(expected, rel=1e-12)
    cfg = C.from_dict({"optim": {"lr": 0.1, "lr_base_batch": 64}, "train": {"batch_size": 96}})
    run = one_epoch_run(cfg)
    assert run.schedule.peak == pytest.approx(0.15)
    with pytest.raises(ConvzooError, match=r"train.accum_steps=3: train.batch_size=128"):
        C.from_dict({"train": {"batch_size": 128, "accum_steps": 3}})


def one_epoch_run(cfg: C.Config) -> Any:
    from convzoo.data.loading.pipeline import build_pipeline
    from convzoo.runtime import Runtime
    from convzoo.training.setup import build_run

    cfg = C.replace(cfg, data=C.replace(cfg.data, image_size=8, limit=200))
    rt = Runtime(torch.device("cpu"), None, False)
    return build_run(cfg, rt, build_pipeline(cfg, rt.device))


def test_ddp_options_static_graph_where_valid(tmp_path: Path) -> None:
    """gradient_as_bucket_view always; static graph unless the model's graph is dynamic
    (stochastic depth) or micro-batches skip the all-reduce; asking for it there is one line."""
    from convzoo.models import create_model
    from convzoo.training.distributed import wrap_ddp

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}",
                                         rank=0, world_size=1)
    try:
        cpu = torch.device("cpu")
        plain, skipping = create_model("resnet20"), create_model("resnet20", drop_path=0.2)
        cases = [(plain, {}, True), (skipping, {}, False), (plain, {"accum_steps": 2}, False),
                 (plain, {"ddp_static_graph": False}, False)]
        for model, train, static in cases:
            ddp = wrap_ddp(model, C.TrainConfig(**train), cpu)
            assert ddp.gradient_as_bucket_view and ddp.static_graph == static
            assert ddp.find_unused_parameters == (model is skipping)
        for model, train in ((skipping, {}), (plain, {"accum_steps": 2})):
            with pytest.raises(ConvzooError, match="train.ddp_static_graph=true: "):
                wrap_ddp(model, C.TrainConfig(ddp_static_graph=True, **train), cpu)
    finally:
        torch.distributed.destroy_process_group()
