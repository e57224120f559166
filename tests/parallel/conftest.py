"""Helpers of the tensor-parallel tests: torchrun runs of tests/parallel/tp_worker.py or of `neva`."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 120  # collectives give up after this (NEVA_TP_TIMEOUT_S); a finished run took far less


def torchrun(processes: int, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """`torchrun --standalone --nproc-per-node N ARGS` from the repository root; (result, seconds taken)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "NEVA_TP_TIMEOUT_S": str(HANG_S), "OMP_NUM_THREADS": "1",
                   **(env or {})}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={processes}", *args], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=2 * HANG_S + 60)
    return result, time.monotonic() - start


def run_ok(processes: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result, _ = torchrun(processes, *args, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result

