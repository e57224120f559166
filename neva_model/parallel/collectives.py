"""The collectives of tensor parallelism, on torch.distributed's default process group (gloo on CPUs, NCCL on GPUs).

Plain collectives rather than DTensor / torch.distributed.tensor.parallel: every layer computes with neva_kernels'
custom ops on plain local tensors (flash and paged attention over a rank's heads, its own paged KV cache), so a
DTensor would be unwrapped around each of them; Megatron's split needs only the three collectives below (the sum
after a row-parallel projection, the gather of vocabulary-parallel logits, rank 0's sampled tokens), and
all_or_none so that an error on one rank ends every rank instead of leaving the others waiting in a collective.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from neva_kernels import NevaError


class TensorParallelError(NevaError, RuntimeError):
    """A step failed on some rank; every rank raises this, with the first failing rank's message."""


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group: the default process group, `world_size` ranks."""
    rank: int
    world_size: int

    def all_reduce(self, x: Tensor) -> Tensor:
        """The sum of x over the ranks, in place (returns x)."""
        dist.all_reduce(x)
        return x

    def all_gather(self, x: Tensor, dim: int = -1) -> Tensor:
        """The ranks' x concatenated along `dim`, rank order."""
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    def broadcast(self, x: Tensor) -> Tensor:
        """Rank 0's x on every rank, in place (returns x)."""
        dist.broadcast(x, src=0)
        return x

    @contextmanager
    def all_or_none(self, describe: Callable[[Exception], str] = str) -> Iterator[None]:
        """Run the block on every rank, then agree: if it raised on any rank, every rank raises TensorParallelError
        carrying the first failing rank's message (describe(error)), so no rank goes on to wait for another."""
        failure = None
        try:
            yield
        except Exception as error:  # noqa: BLE001 (re-raised below, on every rank)
            failure = error
        messages: list[str | None] = [None] * self.world_size
        dist.all_gather_object(messages, None if failure is None else describe(failure))
        failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
        if failed:
            rank, message = failed[0]
            raise TensorParallelError(f"rank {rank}: {message}") from failure
