"""Run under torchrun by tests/test_distributed.py: each rank builds the training pipeline as
`convzoo train` does and saves its first batches of epoch 1 (and their augmentation seeds)."""

import os
import sys
from pathlib import Path

import torch

from convzoo import config as C
from convzoo.data.loading.pipeline import build_pipeline

out = Path(sys.argv[1])
torch.distributed.init_process_group("gloo")
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
cfg = C.from_dict({"data": {"source": "digits", "image_size": 8, "limit": 256},
                   "augment": {"pad": 2, "flip": True, "cutout": 3},
                   "train": {"batch_size": 32, "seed": 3}})
data = build_pipeline(cfg, torch.device("cpu"), rank=rank, world_size=world)
data.train.set_epoch(1)
batches = [x for x, _ in data.train][:3]
seeds = [data.train.stage.generator("cpu", 1, k).initial_seed() for k in range(3)]
torch.save({"x": batches, "seeds": seeds}, out / f"rank{rank}.pt")
torch.distributed.destroy_process_group()
assert os.environ["WORLD_SIZE"] == str(world)
