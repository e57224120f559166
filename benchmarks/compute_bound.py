"""Compute-bound ops: flash attention forward and backward, and the fused image-token projector.

Attention (bf16, FlashAttention's benchmark grid): head dim 64 and 128 with 2048 / head_dim heads, causal and
not, sequence lengths 512 .. 16k at 16k tokens per batch. FLOPs as FlashAttention counts them: forward
4 * S^2 * D * H * B, halved for causal; backward 2.5x the forward. Anchors: PyTorch SDPA with each of its
flash, cuDNN and memory-efficient backends, and the flash-attn package where it is installed. On Hopper the cuda
backend's mma.sync (sm80) forward is also measured as "neva-cuda-sm80", beside the per-device choice. A backward case
times the gradient alone: each implementation runs its forward once (on its first, warm-up call) and keeps the
graph.

Projector (bf16, LLaVA-1.5-7B): 576 tokens per image, CLIP-L 1024 -> 4096 -> 4096, 1/8/32 images, written into
the image-token rows of the prompt embeddings; anchors: PyTorch eager as HF transformers runs it (linear,
GELU, linear, masked_scatter) and a plain cuBLAS matmul chain of the same FLOPs (no bias, GELU or scatter); on
Hopper also the cuda backend's mma.sync (sm80) kernel as "neva-cuda-sm80".

quick: tiny float32 shapes on CPU (neva's Triton kernels only under TRITON_INTERPRET=1; an anchor that cannot
run on the device is recorded in `missing` with the reason, as on a GPU).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import neva_kernels as nk
from neva_kernels import backends
from neva_kernels.architecture import is_hopper

from .case import Case

NEVA_BACKENDS = {"neva-cuda": "cuda", "neva-triton": "triton"}
SDPA_BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                 "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
TOKENS_PER_BATCH, MODEL_DIM = 16384, 2048
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
IMAGE_TOKENS, VISION_DIM, TEXT_DIM = 576, 1024, 4096


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _gradient_only(forward: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """A call that returns d(out)/d(inputs) for a fixed upstream gradient; the forward runs on the first call."""
    graph = {}

    def call():
        if not graph:
            graph["out"] = forward()
            graph["grad"] = torch.randn_like(graph["out"])
        return torch.autograd.grad(graph["out"], inputs, graph["grad"], retain_graph=True)
    return call


def _try(name: str, call: Callable[[], object], implementations: dict, missing: dict) -> None:
    """Keep `call` if one run of it succeeds here, else record why not (an anchor the device or build lacks)."""
    try:
        call()
    except Exception as error:  # unavailable kernels raise RuntimeError/NotImplementedError/ImportError variants
        missing[name] = _first_line(error)
        return
    implementations[name] = call


# ---- flash attention -----------------------------------------------------------------------------------

def _why_no_sm80_on_hopper(op: str, device: torch.device, args: tuple) -> str | None:
    if not is_hopper(device):
        return "not a Hopper GPU"
    return backends.why_unable(op, "cuda", device, args)


def _attention_case(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, backward: bool) -> Case:
    """q, k, v [B, S, H, D] (requires_grad when backward)."""
    batch, seqlen, heads, head_dim = q.shape
    implementations, missing = {}, {}
    wrap = ((lambda forward: _gradient_only(forward, (q, k, v))) if backward else (lambda forward: forward))

    args = (q, k, v, causal, head_dim ** -0.5, None, None, None, None)
    for name, backend in NEVA_BACKENDS.items():
        reason = backends.why_unable("flash_attention", backend, q.device, args)
        if reason is None and backward and backend != "torch":
            grad_args = (q, None, q, k, v, q, None, *args[3:])  # the checks read dtypes and shapes of q, k, v
            reason = backends.why_unable("flash_attention_backward", backend, q.device, grad_args)
        if reason is None:
            _try(name, wrap(lambda b=backend: nk.flash_attention(q, k, v, causal, backend=b)), implementations,
                 missing)
        else:
            missing[name] = reason

    if not backward and _why_no_sm80_on_hopper("flash_attention", q.device, args) is None:
        # On Hopper neva-cuda is the wgmma kernel where it has the head dim; the mma.sync one is measured beside it.
        qd, kd, vd = (t.detach() for t in (q, k, v))
        _try("neva-cuda-sm80", lambda: torch.ops.neva_cuda.flash_attention(
            qd, kd, vd, causal, head_dim ** -0.5, None, None, None, None, kernel=80), implementations, missing)

    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's [B, H, S, D], the same memory
    for name, sdpa_backend in SDPA_BACKENDS.items():
        def sdpa(chosen=sdpa_backend):
            with sdpa_kernel(chosen):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        _try(name, wrap(sdpa), implementations, missing)

    try:
        from flash_attn import flash_attn_func
    except ImportError as error:
        missing["flash-attn"] = f"flash_attn is not installed ({error})"
    else:
        _try("flash-attn", wrap(lambda: flash_attn_func(q, k, v, causal=causal)), implementations, missing)

    flops = 4 * seqlen * seqlen * head_dim * heads * batch / (2 if causal else 1) * (2.5 if backward else 1.0)
    dtype = str(q.dtype).removeprefix("torch.")
    return Case(op="flash_attention", label=f"b{batch} s{seqlen} h{heads} d{head_dim} {'causal ' if causal else ''}"
                                             f"{dtype}{' backward' if backward else ''}",
                size=seqlen, implementations=implementations, missing=missing, flops=flops, backward=backward)


def _attention_cases(seqlens, head_dims, model_dim: int, tokens: int, dtype: torch.dtype,
                     device: torch.device) -> Iterator[Case]:
    for head_dim in head_dims:
        for seqlen in seqlens:
            shape = (max(tokens // seqlen, 1), seqlen, model_dim // head_dim, head_dim)
            q, k, v = (torch.randn(shape, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
            for causal in (False, True):
                for backward in (False, True):
                    yield _attention_case(q, k, v, causal, backward)


# ---- image-token projector -----------------------------------------------------------------------------

def _projector_case(images: int, tokens: int, vision: int, text: int, dtype: torch.dtype,
                    device: torch.device) -> Case:
    rand = (lambda *shape: torch.randn(*shape, dtype=dtype, device=device) * shape[-1] ** -0.5)
    features = rand(images, tokens, vision)
    w1, b1, w2, b2 = rand(text, vision), rand(text), rand(text, text), rand(text)
    prompt = tokens + 64  # each image sits inside a prompt of 64 text tokens
    embeds = rand(images, prompt, text)
    mask = torch.zeros(images, prompt, dtype=torch.bool, device=device)
    mask[:, 32:32 + tokens] = True
    args = (features, w1, b1, w2, b2, embeds, mask)
    implementations, missing = {}, {}
    for name, backend in NEVA_BACKENDS.items():
        reason = backends.why_unable("project_image_tokens", backend, device, args)
        if reason is None:
            _try(name, lambda b=backend: nk.project_image_tokens(*args, backend=b), implementations, missing)
        else:
            missing[name] = reason

    if _why_no_sm80_on_hopper("project_image_tokens", device, args) is None:
        # On Hopper neva-cuda is the wgmma + TMA kernel; the mma.sync one is measured beside it.
        _try("neva-cuda-sm80", lambda: torch.ops.neva_cuda.project_image_tokens(*args, kernel=80),
             implementations, missing)

    def eager():
        rows = F.linear(F.gelu(F.linear(features.reshape(-1, vision), w1, b1)), w2, b2)
        return embeds.masked_scatter(mask[..., None], rows)
    implementations["torch-eager"] = eager
    x, w1t, w2t = features.reshape(-1, vision), w1.t().contiguous(), w2.t().contiguous()
    implementations["cublas-matmul"] = (lambda: torch.mm(torch.mm(x, w1t), w2t))
    rows = images * tokens
    return Case(op="project_image_tokens",
                label=f"{images} image{'s' if images > 1 else ''} x {tokens} tokens {vision}->{text}->{text} "
                      f"{str(dtype).removeprefix('torch.')}",
                size=images, implementations=implementations, missing=missing,
                flops=2 * rows * (vision * text + text * text))


def cases(device: torch.device, quick: bool) -> Iterator[Case]:
    if quick:
        yield from _attention_cases((64, 128), (64,), model_dim=128, tokens=256, dtype=torch.float32, device=device)
        for images in (1, 2):
            yield _projector_case(images, 8, 32, 48, torch.float32, device)
        return
    yield from _attention_cases(SEQLENS, (64, 128), MODEL_DIM, TOKENS_PER_BATCH, torch.bfloat16, device)
    for images in (1, 8, 32):
        yield _projector_case(images, IMAGE_TOKENS, VISION_DIM, TEXT_DIM, torch.bfloat16, device)
