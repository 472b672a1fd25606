#!/usr/bin/env bash
# The GPU check of benchmarks/gpu_check.py, from the repository root: prints one JSON object.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" gpu_check.py "$@"
