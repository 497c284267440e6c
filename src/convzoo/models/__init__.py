"""The model zoo: every network registered by name; build one with `create_model(name)`."""

# Importing the family modules registers their models.
from convzoo.models import (  # noqa: F401
    fast,
    googlenet,
    inception_bn,
    resnet_cifar,
    resnext,
    simple_cnn,
    tv,
)
from convzoo.models.info import format_table, model_info
from convzoo.models.registry import (
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    register_model,
)

__all__ = [
    "ModelEntry",
    "create_model",
    "format_table",
    "get_entry",
    "list_models",
    "model_info",
    "register_model",
]
