#!/usr/bin/env bash
# The main job of the README: sets up .venv, then runs every kernel on every backend this machine has and prints
# the table (op, backend, error against the float64 reference, time). On a machine without a GPU the Triton
# kernels run in Triton's CPU interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PY="${NEVA_VENV:-.venv}/bin/python"
"$PY" -c "import torch, sys; sys.exit(torch.cuda.is_available())" && export TRITON_INTERPRET=1
exec "$PY" -m neva_kernels.selfcheck "$@"
