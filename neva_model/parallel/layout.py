"""Which part of the decoder one rank holds (Megatron's split), and the checkpoint slices that fill it.

Query heads, the MLP's intermediate features and the vocabulary are split into equal contiguous ranges, rank 0
first. K/V heads are split the same way when the ranks divide them; with fewer K/V heads than ranks each rank keeps
the one K/V head its query heads read (replicated over ranks/kv_heads ranks). A vocabulary that the ranks do not
divide is padded: the last rank's rows past the vocabulary are zero and their logits are cut after the gather.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from neva_kernels import NevaValueError

from ..config import NevaConfigError, TextConfig


@dataclass(frozen=True)
class Span:
    """Features [start, start + size) of a dimension of `full` features; those past `full` are padding."""
    start: int
    size: int
    full: int

    @property
    def stored(self) -> int:
        """The features that exist in the checkpoint (the rest is padding)."""
        return max(0, min(self.size, self.full - self.start))


@dataclass(frozen=True)
class Shard:
    """The slice of a checkpoint tensor that one rank holds: `span` along dimension `dim`."""
    dim: int
    span: Span

    def full_shape(self, local_shape) -> list[int]:
        shape = list(local_shape)
        shape[self.dim] = self.span.full
        return shape

    def index(self) -> tuple[slice, ...]:
        """The index that reads this rank's slice from a safetensors get_slice() view."""
        stop = self.span.start + self.span.stored
        return (slice(None),) * self.dim + (slice(self.span.start, stop),)

    def copy_into(self, destination: Tensor, tensor: Tensor) -> None:
        stored = self.span.stored
        destination.narrow(self.dim, 0, stored).copy_(tensor)
        destination.narrow(self.dim, stored, self.span.size - stored).zero_()


@dataclass(frozen=True)
class HeadSplit:
    gpus: int
    heads: int  # query heads on each GPU
    kv_heads: int  # KV heads on each GPU


def split_heads(text: TextConfig, gpus: int) -> HeadSplit:
    """The heads each of `gpus` GPUs holds; a count that cannot split them evenly is a NevaValueError."""
    if text.num_heads % gpus:
        divisors = [d for d in range(1, text.num_heads + 1) if text.num_heads % d == 0]
        raise NevaValueError(f"expected a GPU count dividing the model's {text.num_heads} query heads "
                             f"({', '.join(map(str, divisors))}), got {gpus}")
    kv = text.num_kv_heads
    if kv % gpus and gpus % kv:
        raise NevaValueError(f"expected a GPU count that divides the model's {kv} KV heads or is a multiple of "
                             f"them, got {gpus}")
    return HeadSplit(gpus, text.num_heads // gpus, max(kv // gpus, 1))


@dataclass(frozen=True)
class Layout:
    """One rank's ranges of query heads, K/V heads, MLP features and vocabulary."""
    heads: Span
    kv_heads: Span
    mlp: Span
    vocab: Span

    @classmethod
    def of(cls, text: TextConfig, rank: int, world_size: int) -> Layout:
        """The layout of `rank` of `world_size`; a model the ranks cannot split is a NevaConfigError."""
        try:
            split = split_heads(text, world_size)
            if text.intermediate_size % world_size:
                raise NevaValueError(f"expected a GPU count dividing the model's intermediate_size "
                                     f"{text.intermediate_size}, got {world_size}")
        except NevaValueError as error:
            raise NevaConfigError(f"tensor parallelism over {world_size} processes: {error}") from None
        heads, kv_heads = text.num_heads, text.num_kv_heads
        first_kv = rank * split.heads // (heads // kv_heads)  # the K/V head of this rank's first query head
        mlp = text.intermediate_size // world_size
        vocab = -(-text.vocab_size // world_size)
        return cls(Span(rank * split.heads, split.heads, heads), Span(first_kv, split.kv_heads, kv_heads),
                   Span(rank * mlp, mlp, text.intermediate_size), Span(rank * vocab, vocab, text.vocab_size))

    def features(self, kind: str, head_dim: int) -> Span:
        """The span of output (column-parallel) or input (row-parallel) features of a projection of `kind`."""
        if kind == "mlp":
            return self.mlp
        heads = self.heads if kind == "heads" else self.kv_heads
        return Span(heads.start * head_dim, heads.size * head_dim, heads.full * head_dim)
