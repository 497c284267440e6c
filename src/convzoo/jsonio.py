"""Valid JSON in and out, in one place for every file convzoo writes or prints (summary.json,
metrics.jsonl, init.json, report.json, ``eval --json``, predictions, weights metadata).

Python's ``json.dumps`` writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats,
and ``json.loads`` reads them back; neither is JSON, and strict parsers (JavaScript, jq, Go,
``json.loads(..., parse_constant=...)``) refuse the file. :func:`dumps_json` writes ``null``
for them instead, and :func:`loads_json` refuses them in what convzoo reads from a file.
Imports nothing but the standard library: the command line prints with it before torch loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def finite_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf, -inf) replaced by None, tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that always writes valid JSON: NaN and infinities become ``null``
    (:func:`finite_json`), and ``allow_nan=False`` guards the rule."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses what is not JSON but Python reads anyway: ``NaN``,
    ``Infinity`` and ``-Infinity``."""
    return json.loads(text, parse_constant=_no_constant)
