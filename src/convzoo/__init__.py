"""convzoo: train, evaluate, reproduce and benchmark convolutional image classifiers.

    import convzoo
    clf = convzoo.load("runs/quickstart")        # -> convzoo.Classifier: predict, evaluate
    result = convzoo.train("quickstart", epochs=2)  # -> TrainResult: run_dir, summary, history
    result = convzoo.sweep(recipe="quickstart", params={"optim.lr": "loguniform:1e-3:1"})

``train``, ``TrainResult``, ``register_model``, ``load``, ``Classifier``, ``sweep`` and
``SweepResult`` are the functions and classes of ``convzoo.training.loop``,
``convzoo.training.results``, ``convzoo.models.registry``, ``convzoo.api`` and
``convzoo.sweeps``, imported on first use
(``__getattr__`` below), so ``import convzoo`` and the CLI stay light.
"""

from typing import Any

__version__ = "0.1.0"


# The imports below stay inside functions: every one of those modules imports torch (5.8 s
# measured here), and the CLI imports this package for __version__ on every call.


def __getattr__(name: str) -> Any:
    """The public API, imported on first use: each name from the module that holds it."""
    if name == "train":
        from convzoo.training.loop import train

        return train
    if name == "TrainResult":
        from convzoo.training.results import TrainResult

        return TrainResult
    if name == "register_model":
        from convzoo.models.registry import register_model

        return register_model
    if name in ("load", "Classifier"):
        from convzoo import api

        return getattr(api, name)
    if name in ("sweep", "SweepResult"):
        from convzoo import sweeps

        return getattr(sweeps, name)
    raise AttributeError(f"module 'convzoo' has no attribute {name!r}")


def create_model(name: str, num_classes: int = 10, **kwargs):  # noqa: ANN201
    """Build a registered model by name (see ``convzoo models``)."""
    from convzoo.models import create_model as _create

    return _create(name, num_classes=num_classes, **kwargs)


def list_models() -> list[str]:
    """Names of every registered model."""
    from convzoo.models import list_models as _list

    return _list()
