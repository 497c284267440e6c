"""A torchrun worker for tests/test_scale.py: ``convzoo <args>`` as ``python -m convzoo`` runs it,
optionally sending itself a stop signal during one step.

    dist_worker.py RANK:STEP:SIG -- <convzoo arguments>

``STEP`` counts this process's optimizer steps from 1 (the signal arrives while that step runs).
"""

import os
import signal
import sys
from typing import Any

from convzoo.cli import main
from convzoo.training import loop

rank, step, sig = sys.argv[1].split(":")
args = sys.argv[2:]
if os.environ["RANK"] == rank:
    real, calls = loop.set_lr, [0]

    def set_lr(optimizer: Any, lr: float) -> None:
        calls[0] += 1
        if calls[0] == int(step):
            os.kill(os.getpid(), getattr(signal, sig))
        real(optimizer, lr)

    loop.set_lr = set_lr
assert args[0] == "--"
sys.exit(main(args[1:]))
