"""torchrun scale-out on CPU (gloo): one run directory, written by rank 0, figures over all ranks."""

import json
import subprocess
import sys
from pathlib import Path

import torch


def test_torchrun_two_processes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "convzoo", "train", "--data", "digits", "--set", "data.image_size=8",
           "--set", "data.limit=256", "--batch-size", "32", "--epochs", "2", "--device", "cpu",
           "--out", str(tmp_path), "--set", "train.threads=1", "--set", "train.tensorboard=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # both ranks agreed on rank 0's run directory
    run = runs[0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # one writer: no duplicated rows
    ckpt = torch.load(run / "last.pt", weights_only=True)
    # 256 training images, global batch 32 = 2 ranks x 16: every epoch sees all 256
    assert ckpt["train_images"] == 2 * 256
    assert proc.stderr.count("epoch 2/2") == 1  # ranks > 0 stay quiet
