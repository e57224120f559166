"""The GPU architecture of a tensor's device: the one place that reads and encodes it.

Backends key the measured preferences on the exact architecture ("sm90", "sm86", "sm100"); the Triton launch
tables key on a tuning generation: "sm90" for Hopper (compute capability 9.x only: Blackwell is not Hopper and
has no wgmma), "sm80" for every other GPU, "cpu" for tensors run by the Triton interpreter. The capability is
read once per device index, from the tensor's device, never from the process's current device.
"""
from __future__ import annotations

import functools

import torch

SM80, SM90, CPU = "sm80", "sm90", "cpu"
# The generations with tuned GPU launch tables, as compiled ahead of time by the tests.
GPU_GENERATIONS = (SM80, SM90)


@functools.cache
def _capability_of_index(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def compute_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device; None for any other device."""
    if device.type != "cuda":
        return None
    return _capability_of_index(device.index if device.index is not None else torch.cuda.current_device())


def architecture(device: torch.device) -> str:
    """"sm<major><minor>" of a CUDA device (e.g. "sm90", "sm120"), "cpu" otherwise."""
    capability = compute_capability(device)
    return CPU if capability is None else "sm{}{}".format(*capability)


def is_hopper(device: torch.device) -> bool:
    capability = compute_capability(device)
    return capability is not None and capability[0] == 9


def generation(device: torch.device) -> str:
    """The tuning generation of the Triton launch tables: SM90 on Hopper, SM80 on other GPUs, CPU off-GPU."""
    if device.type != "cuda":
        return CPU
    return SM90 if is_hopper(device) else SM80


def capability_number(gpu_generation: str) -> int:
    """The compute capability a GPU generation's kernels are compiled for ahead of time (80 or 90)."""
    return {SM80: 80, SM90: 90}[gpu_generation]
