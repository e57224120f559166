"""Memory-bound ops: rms_norm (with and without the fused residual add) and paged decode attention.

Each case runs neva's kernel backends (where they can run the call; otherwise the reason is recorded) against
PyTorch eager (the reference), torch.compile of the reference and, for decode, gather-the-pages + SDPA.
`bytes` is the least traffic a call needs (every input read once, every output written once), so GB/s against
the measured copy bandwidth is the share of the roofline.

Real shapes (bf16): rms_norm 16384 rows x hidden 4096 / 8192; decode with LLaMA-7B heads (32 query and 32 KV
heads, head dim 128, block size 16) at batch 64 x 1k, 16 x 4k and 1 x 64k tokens of context.
quick: tiny float32 shapes that run on CPU in seconds (torch.compile left out: its compile time dominates there).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

import neva_kernels as nk
from neva_kernels import backends, reference

from .case import Case

NEVA_BACKENDS = {"neva-cuda": "cuda", "neva-triton": "triton"}
BLOCK_SIZE, HEADS, HEAD_DIM = 16, 32, 128


def _implementations(op: str, call: Callable[..., object], args: tuple, device: torch.device, quick: bool,
                     eager: Callable[[], object], anchors: dict[str, Callable[[], object]] | None = None):
    """neva's backends that can run `call(*args, backend=...)`, then the anchors; and why the others are missing."""
    implementations, missing = {}, {}
    for name, backend in NEVA_BACKENDS.items():
        reason = backends.why_unable(op, backend, device, args)
        if reason is None:
            implementations[name] = (lambda b=backend: call(*args, backend=b))
        else:
            missing[name] = reason
    implementations["torch-eager"] = eager
    if quick and device.type != "cuda":
        missing["torch-compile"] = "left out of the quick CPU run (compiling takes longer than the run)"
    else:
        implementations["torch-compile"] = torch.compile(eager)
    implementations.update(anchors or {})
    return implementations, missing


# ---- rms_norm ------------------------------------------------------------------------------------------

def _rms_norm_case(rows: int, hidden: int, residual: bool, dtype: torch.dtype, device: torch.device,
                   quick: bool) -> Case:
    x = torch.randn(rows, hidden, dtype=dtype, device=device)
    weight = torch.rand(hidden, dtype=dtype, device=device) + 0.5
    res = torch.randn_like(x) if residual else None
    args = (x, weight, 1e-6) if res is None else (x, weight, 1e-6, res)
    implementations, missing = _implementations(
        "rms_norm", nk.rms_norm, args, device, quick, eager=lambda: reference.rms_norm(*args))
    streams = 4 if residual else 2  # x (+ residual) read, y (+ updated residual) written
    return Case(op="rms_norm", label=f"{rows}x{hidden} {str(dtype).removeprefix('torch.')}"
                                     f"{' +residual' if residual else ''}",
                size=hidden, implementations=implementations, missing=missing,
                bytes=(streams * rows + 1) * hidden * x.element_size())


# ---- paged decode attention ----------------------------------------------------------------------------

def _gather_sdpa(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context: int) -> torch.Tensor:
    """The common unfused way: copy each sequence's pages into a dense [B, Hkv, S, D] tensor, then SDPA."""
    batch = q.shape[0]
    dense = [cache[block_tables.long()].reshape(batch, -1, *cache.shape[2:])[:, :context].transpose(1, 2)
             for cache in (k_cache, v_cache)]
    group = q.shape[1] // k_cache.shape[2]
    return F.scaled_dot_product_attention(q[:, :, None], *dense, enable_gqa=group > 1)[:, :, 0]


def _decode_case(batch: int, context: int, dtype: torch.dtype, device: torch.device, quick: bool,
                 heads: int = HEADS, head_dim: int = HEAD_DIM) -> Case:
    """Every sequence holds `context` tokens in pages scattered over the cache (a shuffled block table)."""
    blocks_per_seq = -(-context // BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, heads, head_dim, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    block_tables = torch.randperm(num_blocks, device=device).reshape(batch, blocks_per_seq).to(torch.int32)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q = torch.randn(batch, heads, head_dim, dtype=dtype, device=device)
    scale = head_dim ** -0.5
    args = (q, k_cache, v_cache, block_tables, seq_lens, scale)
    implementations, missing = _implementations(
        "paged_decode_attention", nk.paged_decode_attention, args, device, quick,
        eager=lambda: reference.paged_decode_attention(*args),
        anchors={"gather+sdpa": lambda: _gather_sdpa(q, k_cache, v_cache, block_tables, context)})
    element = q.element_size()
    kv_bytes = 2 * batch * context * heads * head_dim * element
    io_bytes = 2 * q.numel() * element + block_tables.numel() * 4 + seq_lens.numel() * 4
    return Case(op="paged_decode_attention",
                label=f"batch {batch} x ctx {context} {str(dtype).removeprefix('torch.')} h{heads} d{head_dim}",
                size=context, implementations=implementations, missing=missing, bytes=kv_bytes + io_bytes)


def cases(device: torch.device, quick: bool) -> Iterator[Case]:
    if quick:
        for hidden, residual in ((256, False), (512, True)):
            yield _rms_norm_case(64, hidden, residual, torch.float32, device, quick)
        for batch, context in ((4, 100), (1, 1000)):
            yield _decode_case(batch, context, torch.float32, device, quick, heads=4, head_dim=64)
        return
    for hidden in (4096, 8192):
        for residual in (False, True):
            yield _rms_norm_case(16384, hidden, residual, torch.bfloat16, device, quick)
    for batch, context in ((64, 1024), (16, 4096), (1, 65536)):
        yield _decode_case(batch, context, torch.bfloat16, device, quick)
