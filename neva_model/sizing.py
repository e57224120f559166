"""What a model configuration costs before any weight is loaded: parameters counted on the meta device, weight
memory per dtype and KV cache bytes per token. `python -m neva_model.sizing [preset ...]` prints a table
(default: the NeVA presets on Nemotron decoders)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .config import NEVA_PRESETS, NevaConfig, TextConfig
from .model import Neva

# Bytes per element of the weight / KV cache formats reported.
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1}


@dataclass(frozen=True)
class SizeReport:
    parameters: int
    weight_bytes: dict[str, int]      # per dtype of DTYPE_BYTES
    kv_bytes_per_token: dict[str, int]  # K and V of every layer for one token, per dtype of DTYPE_BYTES


def meta_model(config: NevaConfig) -> Neva:
    """Neva(config) on the meta device: every parameter's shape, no memory allocated."""
    with torch.device("meta"):
        return Neva(config)


def parameter_count(config: NevaConfig) -> int:
    return sum(p.numel() for p in meta_model(config).parameters())


def kv_bytes_per_token(text: TextConfig, dtype: str, kv_heads: int | None = None) -> int:
    """K and V of every layer for one token, over `kv_heads` heads (default: all of the model's)."""
    return 2 * text.num_layers * (kv_heads or text.num_kv_heads) * text.attention_head_dim * DTYPE_BYTES[dtype]


def size_report(config: NevaConfig) -> SizeReport:
    parameters = parameter_count(config)
    return SizeReport(parameters, {d: parameters * b for d, b in DTYPE_BYTES.items()},
                      {d: kv_bytes_per_token(config.text, d) for d in DTYPE_BYTES})


def format_table(names: list[str]) -> str:
    header = (["preset", "parameters"] + [f"weights {d} (GiB)" for d in DTYPE_BYTES]
              + [f"KV/token {d} (KiB)" for d in DTYPE_BYTES])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        report = size_report(NevaConfig.from_name(name))
        cells = ([name, f"{report.parameters:,}"] + [f"{b / 2**30:.2f}" for b in report.weight_bytes.values()]
                 + [f"{b / 2**10:.0f}" for b in report.kv_bytes_per_token.values()])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(sys.argv[1:] or list(NEVA_PRESETS)))
