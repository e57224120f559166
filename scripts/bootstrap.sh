#!/usr/bin/env bash
# Sets up the virtual environment that the demo and the tests use (NEVA_VENV, default .venv), idempotently:
#  - torch (default the CUDA 13 build 2.14.1: it runs on CPU too, and lets nvcc build the extension without a GPU),
#  - neva in editable mode with its dev extras (triton, transformers, pytest, ...), reinstalled when
#    pyproject.toml or setup.py change,
#  - neva_kernels._C, rebuilt incrementally (ninja) where nvcc and a CUDA build of torch are present.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NEVA_VENV:-.venv}
PY="$VENV/bin/python"
TORCH_SPEC=${NEVA_TORCH_SPEC:-torch==2.14.1}
PIP=("$PY" -m pip --disable-pip-version-check --quiet)

[ -x "$PY" ] || { echo "neva: creating $VENV"; python3 -m venv "$VENV"; }
stamp="$VENV/.neva-installed"
wanted="$(cat pyproject.toml setup.py | sha1sum | cut -c1-16) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "neva: installing $TORCH_SPEC and the dev dependencies into $VENV (a few minutes the first time)"
  "${PIP[@]}" install setuptools wheel "$TORCH_SPEC"
  NEVA_BUILD_CUDA=0 "${PIP[@]}" install --no-build-isolation -e ".[dev]"
  echo "$wanted" > "$stamp"
fi

# torch otherwise guesses CUDA_HOME=/usr/local from nvcc's path and cannot link libcudart.
[ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
echo "neva: building neva_kernels._C (incremental)"
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py --quiet build_ext --inplace
