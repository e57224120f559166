"""Tensor parallelism of NeVA's decoder over torch.distributed (Megatron's split): see sharding.py for what is split
and what is replicated, collectives.py for the communication, launch.py for torchrun."""
from .collectives import TensorParallel, TensorParallelError
from .layout import Layout, Shard, Span
from .sharding import ShardMap, shard_neva

__all__ = ["Layout", "Shard", "ShardMap", "Span", "TensorParallel", "TensorParallelError", "shard_neva"]
