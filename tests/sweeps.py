"""Which values of a parametrized sweep the inner loop (``pytest -m "not slow"``) runs.

A sweep over every recipe, model or config key is the suite's widest net and its biggest cost;
the inner loop runs the values named here (chosen to cover each kind: a CIFAR net, an ImageNet
net, a multi-stage recipe) and the rest carry the ``slow`` mark, which CI runs as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest


def inner_loop(values: Iterable[Any], fast: Iterable[Any]) -> list[Any]:
    """``values`` for ``pytest.mark.parametrize``: those in ``fast`` unmarked, the rest slow."""
    fast = set(fast)
    values = list(values)
    missing = fast - set(values)
    assert not missing, f"inner-loop values not in the sweep: {sorted(missing)}"
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]
