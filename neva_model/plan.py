"""`neva plan`: what each GPU holds when a NeVA model is split by tensor parallelism over N GPUs, and how many
tokens of KV cache fit beside it. Computed from the configuration alone (parameters on the meta device, see
neva_model.sizing): sizes on paper, not measurements.

The split is Megatron's:
- decoder layers: q/k/v and the MLP's gate/up projections split by output rows (column-parallel), o and down
  projections by input columns (row-parallel, their biases whole on every GPU: added once after the all-reduce).
  Query heads split evenly; KV heads too when there are at least as many as GPUs, otherwise each GPU holds the
  one KV head its query heads read (a KV head replicated on num_gpus / num_kv_heads GPUs);
- embedding and lm_head: vocab-parallel, ceil(vocab / N) rows on each GPU (Megatron pads the vocabulary);
- vision tower, projector and every norm: replicated on every GPU.

Memory of one GPU = weights + reserve + KV cache. The reserve is a fixed fraction of the GPU's memory (default
10%) for the CUDA context, activations, library workspaces and allocator fragmentation: an assumption to set
with --reserve, not a measurement. The KV cache takes the rest, in whole blocks of block_size tokens. A plan fits
when that cache holds at least one sequence of max_seq_len tokens (default: the model's context).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from neva_kernels import NevaValueError

from .config import NevaConfig
from .fused_linear import FusedLinear
from .model import Neva
from .norms import LayerNorm, RMSNorm
from .parallel.layout import HeadSplit, split_heads
from .sizing import DTYPE_BYTES, kv_bytes_per_token, meta_model

WEIGHT_DTYPES = ("bf16", "fp16")  # what the model runs in; fp8 is planned for the KV cache only
GIB = 2**30
# A row-parallel projection's input columns are the output rows of the column-parallel one feeding it.
_ROW_PARALLEL_INPUT = {"o_proj": "q_proj", "down_proj": "up_proj"}
_REPLICATED_MODULES = ("vision_tower", "multi_modal_projector")


@dataclass(frozen=True)
class WeightShares:
    """Parameter elements on one GPU, by how they split."""
    decoder: int  # column- and row-parallel projections of the decoder layers
    vocab: int  # vocab-parallel embedding and lm_head
    replicated: int  # vision tower, projector, norms, row-parallel biases

    @property
    def total(self) -> int:
        return self.decoder + self.vocab + self.replicated


def weight_shares(model: Neva, split: HeadSplit) -> WeightShares:
    """Every parameter of `model` (a tied lm_head counted once), as much of it as one GPU holds."""
    text, n = model.config.text, split.gpus
    head_dim, ffn = text.attention_head_dim, math.ceil(text.intermediate_size / n)
    rows = {"q_proj": split.heads * head_dim, "k_proj": split.kv_heads * head_dim,
            "v_proj": split.kv_heads * head_dim, "gate_proj": ffn, "up_proj": ffn}
    vocab_parallel = (model.language_model.embed_tokens, model.lm_head)
    shares = dict(decoder=0, vocab=0, replicated=0)
    for name, param in model.named_parameters():
        module_name, _, kind = name.rpartition(".")
        module, leaf = model.get_submodule(module_name), module_name.rpartition(".")[2]
        if module_name.split(".")[0] in _REPLICATED_MODULES or isinstance(module, (RMSNorm, LayerNorm)):
            shares["replicated"] += param.numel()
        elif any(module is m for m in vocab_parallel):
            shares["vocab"] += math.ceil(text.vocab_size / n) * text.hidden_size
        elif isinstance(module, FusedLinear) or leaf in rows:  # column-parallel
            out = sum(rows[p] for p in module.part_sizes) if isinstance(module, FusedLinear) else rows[leaf]
            shares["decoder"] += out * (module.in_features if kind == "weight" else 1)
        elif leaf in _ROW_PARALLEL_INPUT:
            if kind == "bias":
                shares["replicated"] += param.numel()
            else:
                shares["decoder"] += module.out_features * rows[_ROW_PARALLEL_INPUT[leaf]]
        else:  # a parameter added to the model without a rule here would be counted wrongly
            raise NevaValueError(f"the planner has no tensor-parallel rule for parameter {name!r}")
    return WeightShares(**shares)


@dataclass(frozen=True)
class GpuPlan:
    """One GPU of a tensor-parallel group, in bytes (the KV cache also in tokens)."""
    split: HeadSplit
    weights: WeightShares  # in bytes of the weights' dtype
    memory: int
    reserve: int
    kv_bytes_per_token: int
    kv_tokens: int  # the whole blocks of cache that fit in what is left
    block_size: int
    max_seq_len: int

    @property
    def kv_cache(self) -> int:
        return self.kv_tokens * self.kv_bytes_per_token

    @property
    def sequence_tokens(self) -> int:
        """Cache tokens one max_seq_len sequence takes (whole blocks)."""
        return math.ceil(self.max_seq_len / self.block_size) * self.block_size

    @property
    def sequences(self) -> int:
        """max_seq_len sequences the cache holds at once."""
        return self.kv_tokens // self.sequence_tokens

    @property
    def needed(self) -> int:
        """Weights + reserve + the KV cache of one max_seq_len sequence."""
        return self.weights.total + self.reserve + self.sequence_tokens * self.kv_bytes_per_token

    @property
    def fits(self) -> bool:
        return self.needed <= self.memory


def plan_gpus(config: NevaConfig, gpu_counts: list[int], memory: int, dtype: str = "bf16",
              kv_dtype: str | None = None, reserve: float = 0.1, block_size: int = 16,
              max_seq_len: int | None = None) -> list[GpuPlan]:
    """The plan of one GPU for each count of GPUs of `memory` bytes (the rules: this module's docstring)."""
    if dtype not in WEIGHT_DTYPES:
        raise NevaValueError(f"plan: 'dtype' must be one of {', '.join(WEIGHT_DTYPES)}, got {dtype!r}")
    kv_dtype = kv_dtype or dtype
    if kv_dtype not in DTYPE_BYTES:
        raise NevaValueError(f"plan: 'kv_dtype' must be one of {', '.join(DTYPE_BYTES)}, got {kv_dtype!r}")
    if not 0 <= reserve < 1:
        raise NevaValueError(f"plan: 'reserve' must be a fraction in [0, 1), got {reserve}")
    context = config.text.max_position_embeddings
    max_seq_len = max_seq_len or context
    if not 1 <= max_seq_len <= context:
        raise NevaValueError(f"plan: 'max_seq_len' must be in [1, the model's context of {context}], got "
                             f"{max_seq_len}")
    splits = [split_heads(config.text, gpus) for gpus in gpu_counts]
    model, reserved, plans = meta_model(config), int(reserve * memory), []
    for split in splits:
        shares = weight_shares(model, split)
        weights = WeightShares(*(elements * DTYPE_BYTES[dtype] for elements in
                                 (shares.decoder, shares.vocab, shares.replicated)))
        per_token = kv_bytes_per_token(config.text, kv_dtype, split.kv_heads)
        blocks = max((memory - weights.total - reserved) // (per_token * block_size), 0)
        plans.append(GpuPlan(split, weights, memory, reserved, per_token, blocks * block_size, block_size,
                             max_seq_len))
    return plans


def format_plan(name: str, plans: list[GpuPlan], dtype: str, kv_dtype: str, reserve: float) -> str:
    """A line naming the model and the assumptions, then a markdown table with one row per GPU count."""
    first = plans[0]
    lines = [f"{name} on GPUs of {first.memory / 1e9:.2f} GB = {first.memory / GIB:.2f} GiB: weights {dtype}, "
             f"KV cache {kv_dtype} in blocks of {first.block_size} tokens",
             f"reserved on each GPU: {reserve:.0%} ({first.reserve / GIB:.2f} GiB) for the CUDA context, activations "
             f"and workspaces; each GPU caches its KV heads of every token (KV tokens: the group's); fits: the KV "
             f"cache holds at least one {first.max_seq_len}-token sequence", ""]
    header = ["GPUs", "heads / KV heads per GPU", "decoder layers (GiB)", "embedding + lm_head (GiB)",
              "replicated (GiB)", "weights (GiB)", "KV cache (GiB)", "KV tokens",
              f"{first.max_seq_len}-token sequences", "fits"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for plan in plans:
        w = plan.weights
        verdict = "yes" if plan.fits else f"does not fit: {(plan.needed - plan.memory) / GIB:.2f} GiB short"
        cells = [str(plan.split.gpus), f"{plan.split.heads} / {plan.split.kv_heads}"]
        cells += [f"{b / GIB:.2f}" for b in (w.decoder, w.vocab, w.replicated, w.total, plan.kv_cache)]
        cells += [f"{plan.kv_tokens:,}", f"{plan.sequences:,}", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
