"""The stamp every result file carries: what ran, on what, from which commit, when."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

from neva_kernels.architecture import architecture


def git_commit() -> str:
    """The commit of this checkout; the GPU machine's copy has no .git, so fall back to a .commit file."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        path = os.path.join(root, ".commit")
        return open(path).read().strip() if os.path.exists(path) else "unknown"


def _driver_version() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "none"


def stamp(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    on_gpu = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if on_gpu else f"CPU ({platform.processor() or platform.machine()})",
        "architecture": architecture(device),  # the key of measured_preferences.json
        "driver": _driver_version() if on_gpu else "none",
        "torch": torch.__version__, "cuda": torch.version.cuda or "none", "triton": triton_version,
        "python": platform.python_version(), "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
