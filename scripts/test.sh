#!/usr/bin/env bash
# The test command of the README (and of CI): sets up .venv, then runs the whole test suite on this machine.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/kernels -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Where the extension can be built, its absence is a failure rather than a skip.
if "${NEVA_VENV:-.venv}/bin/python" -c "import torch, shutil, sys; sys.exit(not (torch.version.cuda and shutil.which('nvcc')))"; then
  export NEVA_REQUIRE_CUDA_EXTENSION=1
fi
exec "${NEVA_VENV:-.venv}/bin/python" -m pytest -p no:cacheprovider "${@:-tests}"
