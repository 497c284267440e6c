#!/usr/bin/env bash
# Every GPU figure convzoo owes, in one command that fits a short GPU session (issue 16):
#
#   benchmarks/gpu_suite.sh OUT_DIR [--budget SECONDS] [--dry-run] [--quick] [--only STEPS]
#
# Needs, beside the checkout, gpu_assets/ with cifar10-jpeg.tar.gz and
# airbench/airbench94_compiled.py (BENCHMARKS.md, "Running the GPU suite", says where each comes
# from). convzoo runs from src/ through PYTHONPATH: no install (an editable install can fail on
# an old setuptools) and no network. PYTHON picks the interpreter (default python3, else python).
# Everything else is benchmarks/gpu_suite.py; `--help` lists the options.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
    done
fi
if [ -z "$PY" ]; then
    echo "gpu_suite: error: no python3 or python on PATH (set PYTHON=/path/to/python)" >&2
    exit 2
fi
if ! why="$("$PY" -c 'import convzoo' 2>&1)"; then  # torch: checked by gpu_suite.py
    echo "gpu_suite: error: $PY cannot import convzoo from $ROOT/src: ${why##*$'\n'}" >&2
    exit 2
fi
exec "$PY" "$ROOT/benchmarks/gpu_suite.py" "$@"
