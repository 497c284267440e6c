"""convzoo: train, evaluate, reproduce and benchmark convolutional image classifiers.

    import convzoo
    clf = convzoo.load("runs/quickstart")        # -> convzoo.Classifier: predict, evaluate
    run_dir = convzoo.train("quickstart", epochs=2)
    result = convzoo.sweep(recipe="quickstart", params={"optim.lr": "loguniform:1e-3:1"})

(``convzoo.api`` and ``convzoo.sweeps``; imported on first use, so ``import convzoo`` and the CLI
stay light.)
"""

import importlib
from typing import Any

from convzoo import train as train  # the training package, callable: convzoo.api.train

__version__ = "0.1.0"
# Resolved by __getattr__ below: name -> the module that holds it.
API = {"load": "api", "Classifier": "api", "sweep": "sweeps", "SweepResult": "sweeps"}


def __getattr__(name: str) -> Any:
    if name in API:
        return getattr(importlib.import_module(f"convzoo.{API[name]}"), name)
    raise AttributeError(f"module 'convzoo' has no attribute {name!r}")


def create_model(name: str, num_classes: int = 10, **kwargs):  # noqa: ANN201
    """Build a registered model by name (see ``convzoo models``)."""
    from convzoo.models import create_model as _create

    return _create(name, num_classes=num_classes, **kwargs)


def list_models() -> list[str]:
    """Names of every registered model."""
    from convzoo.models import list_models as _list

    return _list()
