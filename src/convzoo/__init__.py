"""convzoo: train, evaluate, reproduce and benchmark convolutional image classifiers."""

__version__ = "0.1.0"


def create_model(name: str, num_classes: int = 10, **kwargs):  # noqa: ANN201
    """Build a registered model by name (see ``convzoo models``)."""
    from convzoo.models import create_model as _create

    return _create(name, num_classes=num_classes, **kwargs)


def list_models() -> list[str]:
    """Names of every registered model."""
    from convzoo.models import list_models as _list

    return _list()
