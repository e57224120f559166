"""shard_neva: a Neva on the meta device cut down to one rank's share of the decoder, before any weight is read.

Column-parallel (each rank computes its own output features, no communication): q/k/v and the MLP's gate/up
projections; in a FusedLinear each part is cut on its own (the rank's q rows, then its k and v rows). Row-parallel
(each rank takes its own input features, one all-reduce): o_proj and down_proj. The embedding and the lm head are
vocabulary-parallel. Norms, the vision tower and the projector are small and replicated: every rank runs them on
the same inputs and gets the same result, so image features need no communication.
"""
from __future__ import annotations

from torch import nn

from ..decoder import DecoderAttention
from ..fused_linear import FusedLinear
from ..model import Neva
from .collectives import TensorParallel
from .layers import RowParallelLinear, VocabParallelEmbedding, VocabParallelHead
from .layout import Layout, Shard

# Projection (or fused part) name -> what its output (column-parallel) or input (row-parallel) features are.
COLUMN_PARALLEL = {"q_proj": "heads", "k_proj": "kv_heads", "v_proj": "kv_heads", "gate_proj": "mlp", "up_proj": "mlp"}
ROW_PARALLEL = {"o_proj": "heads", "down_proj": "mlp"}

# (model tensor name, fused part or None) -> the slice of the checkpoint tensor this rank holds
ShardMap = dict[tuple[str, str | None], Shard]


def shard_neva(model: Neva, tp: TensorParallel) -> ShardMap:
    """Replace, in the meta-device `model`, every decoder module that tensor parallelism splits by its share for
    `tp.rank`; returns which slice of each checkpoint tensor fills which (part of a) model tensor."""
    text = model.config.text
    layout = Layout.of(text, tp.rank, tp.world_size)
    head_dim = text.attention_head_dim
    like = {"device": model.lm_head.weight.device, "dtype": model.lm_head.weight.dtype}
    shards: ShardMap = {}
    for name, module in list(model.language_model.named_modules()):
        path, leaf = f"language_model.{name}", name.rpartition(".")[2]
        if isinstance(module, DecoderAttention):
            module.num_heads, module.num_kv_heads = layout.heads.size, layout.kv_heads.size
        elif isinstance(module, FusedLinear) and set(module.part_sizes) <= set(COLUMN_PARALLEL):
            spans = {part: layout.features(COLUMN_PARALLEL[part], head_dim) for part in module.part_sizes}
            local = FusedLinear(module.in_features, {part: span.size for part, span in spans.items()},
                                module.bias is not None, **like)
            for part, span in spans.items():
                for kind in _kinds(module):
                    shards[f"{path}.{kind}", part] = Shard(0, span)
            _replace(model, path, local)
        elif isinstance(module, nn.Linear) and leaf in COLUMN_PARALLEL:
            span = layout.features(COLUMN_PARALLEL[leaf], head_dim)
            for kind in _kinds(module):
                shards[f"{path}.{kind}", None] = Shard(0, span)
            _replace(model, path, nn.Linear(module.in_features, span.size, module.bias is not None, **like))
        elif isinstance(module, nn.Linear) and leaf in ROW_PARALLEL:
            span = layout.features(ROW_PARALLEL[leaf], head_dim)
            shards[f"{path}.weight", None] = Shard(1, span)  # the bias stays whole
            _replace(model, path, RowParallelLinear(span.size, module.out_features, module.bias is not None, tp,
                                                    **like))
    hidden = text.hidden_size
    model.language_model.embed_tokens = VocabParallelEmbedding(layout.vocab, hidden, tp, **like)
    model.lm_head = VocabParallelHead(layout.vocab, hidden, tp, **like)
    model.tie_weights()
    for name in ("language_model.embed_tokens.weight", "lm_head.weight"):
        shards[name, None] = Shard(0, layout.vocab)
    model.tensor_parallel = tp
    return shards


def _kinds(module: nn.Linear) -> tuple[str, ...]:
    return ("weight", "bias") if module.bias is not None else ("weight",)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)
