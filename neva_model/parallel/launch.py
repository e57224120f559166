"""Running under torchrun: `torchrun --nproc-per-node N --no-python neva ask ...` shards the decoder over N processes.

torchrun starts N copies of the command with WORLD_SIZE, RANK and LOCAL_RANK (and the rendezvous address) set.
Each joins the default process group: NCCL on CUDA devices (process LOCAL_RANK on cuda:LOCAL_RANK), gloo on CPUs.
Without WORLD_SIZE, or with WORLD_SIZE=1, nothing is initialized and the model is not split. Every collective
waits at most NEVA_TP_TIMEOUT_S seconds (default 600: a rank loading a large shard is waited for).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from neva_kernels.errors import first_line

from ..config import NevaConfigError
from .collectives import TensorParallel

TIMEOUT_ENV = "NEVA_TP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise NevaConfigError(f"environment variable {name} must be an int >= {minimum}, got {text!r}")
    return value


def world_size() -> int:
    """The processes torchrun started (1 outside torchrun)."""
    return _env_int("WORLD_SIZE", 1, 1)


def process_device(device: torch.device) -> torch.device:
    """The device of this process: under torchrun on CUDA, cuda:LOCAL_RANK (one GPU per process)."""
    if world_size() == 1 or device.type != "cuda":
        return device
    local_rank = _env_int("LOCAL_RANK", 0, 0)
    if local_rank >= torch.cuda.device_count():
        raise NevaConfigError(f"process LOCAL_RANK={local_rank} needs cuda:{local_rank}, but torch sees only "
                              f"{torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device: torch.device) -> Iterator[TensorParallel | None]:
    """This process's TensorParallel inside torchrun's group (None when not under torchrun); left at exit."""
    size = world_size()
    if size == 1:
        yield None
        return
    rank = _env_int("RANK", 0, 0)
    if rank >= size:
        raise NevaConfigError(f"environment variable RANK must be below WORLD_SIZE={size}, got {rank}")
    timeout = timedelta(seconds=_env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, 1))
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    except (RuntimeError, ValueError) as error:  # no rendezvous address, a rank that never came, ...
        raise NevaConfigError(f"cannot join the process group of WORLD_SIZE={size} (start neva with torchrun): "
                              f"{first_line(error)}") from error
    try:
        yield TensorParallel(rank, size)
        dist.barrier()  # no rank tears the group down while another still talks to it (seen: aborts at exit)
    finally:
        dist.destroy_process_group()
