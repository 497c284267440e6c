"""The model zoo: every network registered by name; build one with `create_model(name)`."""

from convzoo.models import resnet_cifar  # noqa: F401  (registers the models)
from convzoo.models.registry import (
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    register_model,
)

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
