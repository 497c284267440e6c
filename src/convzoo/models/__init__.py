"""The model zoo: every network registered by name; build one with `create_model(name)`.

Reuse: `freeze` (linear probe / last stage), `head_and_backbone_params` (lr groups),
`weights.init_from` (trained weights into a model; `convzoo.saved.load_init` reads any source).
"""

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
from convzoo.models.freeze import FREEZE_MODES, freeze
from convzoo.models.heads import head_and_backbone_params
from convzoo.models.info import format_table, model_info
from convzoo.models.registry import (
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    register_model,
)
from convzoo.models.weights import InitReport

__all__ = [
    "FREEZE_MODES",
    "InitReport",
    "ModelEntry",
    "create_model",
    "format_table",
    "freeze",
    "get_entry",
    "head_and_backbone_params",
    "list_models",
    "model_info",
    "register_model",
]
