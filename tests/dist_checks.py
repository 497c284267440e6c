"""Run under torchrun (2 or 3 processes, gloo) by tests/test_scale.py; writes what it measured
into OUT (argv[1]) for the test to compare with one process.

* ``evaluate`` of a fixed model over eval splits of every size 1-23 and batch sizes 1, 2, 3, 5
  (with and without test-time views), each rank its shard: the figures every rank returns.
* ``convzoo eval RUN --json`` (argv[2]) under torchrun: what rank 0 prints.
* ``convzoo train`` with a global batch that does not divide by the world size: exit status.
* (2 processes) one epoch of ``train_one_epoch`` with SyncBatchNorm on and off (resnet20), and
  with gradient accumulation (cnn, dropout off): the weights after it.
"""

import contextlib
import io
import itertools
import os
import sys
from pathlib import Path

import torch
from scale_steps import one_epoch
from torch import nn

from convzoo.cli import main
from convzoo.data.dataset import Split
from convzoo.data.loading.loaders import ResidentLoader
from convzoo.evaluate import evaluate

out, run_dir = Path(sys.argv[1]), sys.argv[2]
torch.distributed.init_process_group("gloo")
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
torch.set_num_threads(1)


def model_and_split(n: int) -> tuple[nn.Module, Split]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 7))
    g = torch.Generator().manual_seed(n)
    return model, Split(torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g),
                        torch.randint(0, 7, (n,), generator=g))


figures = {}
for n, batch, tta in itertools.product(range(1, 24), (1, 2, 3, 5), (False, True)):
    model, split = model_and_split(n)
    loader = ResidentLoader(split, batch, rank=rank, world_size=world)
    views = (lambda x: [x, x.flip(3)]) if tta else None
    figures[(n, batch, tta)] = evaluate(model, loader, device=torch.device("cpu"), views=views,
                                        world_size=world)
gathered = [None] * world
torch.distributed.all_gather_object(gathered, figures)
if rank == 0:
    assert all(g == figures for g in gathered), "ranks disagree"
    torch.save(figures, out / f"eval-{world}.pt")

printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    code = main(["eval", run_dir, "--json", "--device", "cpu"])
if rank == 0:
    (out / f"cli-eval-{world}.json").write_text(printed.getvalue())
    assert code == 0

errors = io.StringIO()
with contextlib.redirect_stderr(errors):
    code = main(["train", "--data", "digits", "--set", "data.image_size=8", "--batch-size",
                 str(10 * world + 1),
                 "--epochs", "1", "--device", "cpu", "--out", str(out / "runs"), "--set",
                 "train.loggers=[]"])
(out / f"divisible-{world}-{rank}.txt").write_text(f"{code}\n{errors.getvalue()}")


if world == 2:
    states = {"sync": one_epoch("resnet20", 32, rank, world, limit=64, sync_bn=True),
              "nosync": one_epoch("resnet20", 32, rank, world, limit=64, sync_bn=False),
              "accum2": one_epoch("cnn", 128, rank, world, accum_steps=2)}
    if rank == 0:
        torch.save(states, out / "steps-2.pt")
torch.distributed.destroy_process_group()
assert os.environ["WORLD_SIZE"] == str(world)
