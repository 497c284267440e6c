"""``convzoo.train``: the training side (``loop``, ``setup``, ``optim``, ``schedule`` ...), and,
called, the Python API's ``convzoo.train(config_or_recipe, **overrides) -> run directory``.

    run_dir = convzoo.train("quickstart", epochs=2, lr=0.05)   # = convzoo.api.train

Why a callable package: the API's name (``convzoo.train``) is also this subpackage's, and Python
binds a subpackage to its parent's attribute on first import (``import convzoo.train.loop``),
which would shadow a plain function of that name. A module whose class has ``__call__`` is
both: ``convzoo.train.loop`` keeps working and ``convzoo.train(...)`` trains.
"""

import sys
import types
from typing import Any


class _TrainPackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from convzoo.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
