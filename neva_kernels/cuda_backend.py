"""The cuda backend: hand-written CUDA C++ in the compiled extension neva_kernels._C (torch.ops.neva_cuda)."""
from __future__ import annotations

import importlib
import importlib.util

import torch

from . import backends


def _load_extension() -> str | None:
    """Import neva_kernels._C (which registers torch.ops.neva_cuda.*); returns why it failed, or None."""
    if importlib.util.find_spec("neva_kernels._C") is None:
        return ("neva_kernels._C was not built: `pip install -e . --no-build-isolation` builds it where nvcc and "
                "a CUDA build of torch are present (NEVA_BUILD_CUDA=1 makes a failed build an error)")
    try:
        importlib.import_module("neva_kernels._C")
    except ImportError as error:
        return f"neva_kernels._C is built but does not load: {error}"
    return None


LOAD_ERROR = _load_extension()
backends.set_backend_missing("cuda", LOAD_ERROR)


def build_info() -> str:
    """The CUDA toolkit and GPU architectures the extension was compiled for, or why it is missing."""
    return torch.ops.neva_cuda.build_info() if LOAD_ERROR is None else f"not built: {LOAD_ERROR}"


def probe_arch(device: torch.device | str = "cuda") -> tuple[int, bool]:
    """Run a kernel of the extension on `device`; returns (__CUDA_ARCH__ of the cubin that ran, is it arch-specific
    e.g. sm_90a). Proves the extension is compiled, linked, registered, loaded and runnable on this GPU."""
    if LOAD_ERROR is not None:
        raise backends.BackendUnavailableError(LOAD_ERROR)
    out = torch.zeros(2, dtype=torch.int32, device=device)
    torch.ops.neva_cuda.probe_arch(out)
    arch, specific = out.tolist()
    return arch, bool(specific)


# ---- the kernels of the extension, registered with the dispatcher ----------------------------------------
# (backends.py picks them automatically only where measured_preferences.json ranks them; backend="cuda" always.)

# What csrc/launch/launch.h compiles paged decode attention for.
DECODE_HEAD_DIMS = (64, 80, 96, 128, 256)
DECODE_MAX_GROUP = 32


# What the generated flash attention instances (scripts/generate_flash_attention_instances.py) compile: the
# mma.sync (sm80) kernel for all, the wgmma (sm90) kernel, picked on compute capability 9.0, for some.
FLASH_HEAD_DIMS = (64, 80, 96, 128, 256)
FLASH_SM90_HEAD_DIMS = (64, 128)


def _flash_attention_outputs(q: torch.Tensor, cu_seqlens_q: torch.Tensor | None):
    """Empty (out, lse) of a flash attention call: lse [B, Hq, Sq] padded, [Hq, total_q] packed."""
    lse_shape = (q.shape[1], q.shape[0]) if cu_seqlens_q is not None else (q.shape[0], q.shape[2], q.shape[1])
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=torch.float32)


def _register_fakes() -> None:
    """Shapes and dtypes of the extension's ops without running them (FakeTensorMode, torch.compile)."""
    @torch.library.register_fake("neva_cuda::rms_norm")
    def _(x, weight, eps):
        return x.new_empty(x.shape)

    @torch.library.register_fake("neva_cuda::fused_add_rms_norm")
    def _(x, weight, eps, residual):
        return x.new_empty(x.shape), x.new_empty(x.shape)

    @torch.library.register_fake("neva_cuda::layer_norm")
    def _(x, weight, bias, eps, zero_centered_weight):
        return x.new_empty(x.shape)

    @torch.library.register_fake("neva_cuda::fused_add_layer_norm")
    def _(x, weight, bias, eps, zero_centered_weight, residual):
        return x.new_empty(x.shape), x.new_empty(x.shape)

    @torch.library.register_fake("neva_cuda::paged_decode_attention")
    def _(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale):
        return q.new_empty(q.shape)

    @torch.library.register_fake("neva_cuda::paged_decode_attention_with_splits")
    def _(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale, num_splits):
        return q.new_empty(q.shape)

    @torch.library.register_fake("neva_cuda::flash_attention")
    def _(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        return _flash_attention_outputs(q, cu_seqlens_q)

    @torch.library.register_fake("neva_cuda::flash_attention_with_kernel")
    def _(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, kernel):
        return _flash_attention_outputs(q, cu_seqlens_q)

    @torch.library.register_fake("neva_cuda::append_kv_cache")
    def _(k, v, k_cache, v_cache, slot_mapping):
        return None

    @torch.library.register_fake("neva_cuda::project_image_tokens")
    def _(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask):
        return None

    @torch.library.register_fake("neva_cuda::project_image_tokens_with_kernel")
    def _(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask, kernel):
        return None


if LOAD_ERROR is None:
    try:
        _register_fakes()
    except RuntimeError as error:  # an extension built from older sources lacks an op this file knows
        LOAD_ERROR = f"neva_kernels._C is out of date with its sources ({error}): rebuild it"
        backends.set_backend_missing("cuda", LOAD_ERROR)


@backends.register("rms_norm", "cuda")
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    if residual is None:
        return torch.ops.neva_cuda.rms_norm(x, weight, eps)
    return torch.ops.neva_cuda.fused_add_rms_norm(x, weight, eps, residual)


@backends.register("layer_norm", "cuda")
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
               residual: torch.Tensor | None = None, zero_centered_weight: bool = False):
    if residual is None:
        return torch.ops.neva_cuda.layer_norm(x, weight, bias, eps, zero_centered_weight)
    return torch.ops.neva_cuda.fused_add_layer_norm(x, weight, bias, eps, zero_centered_weight, residual)


def _decode_supports(q: torch.Tensor, k_cache: torch.Tensor, *_) -> str | None:
    head_dim, group = q.shape[-1], q.shape[1] // k_cache.shape[2]
    if head_dim not in DECODE_HEAD_DIMS:
        return f"the cuda paged decode is compiled for head_dim {', '.join(map(str, DECODE_HEAD_DIMS))}, got {head_dim}"
    if group > DECODE_MAX_GROUP:
        return f"the cuda paged decode serves at most {DECODE_MAX_GROUP} query heads per KV head, got {group}"
    return None


@backends.register("paged_decode_attention", "cuda", supports=_decode_supports)
def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    return torch.ops.neva_cuda.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale)


def _flash_attention_supports(q: torch.Tensor, *_) -> str | None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"the cuda flash_attention kernels (tensor cores) take float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] not in FLASH_HEAD_DIMS:
        return (f"the cuda flash_attention kernels are compiled for head_dim {', '.join(map(str, FLASH_HEAD_DIMS))}, "
                f"got {q.shape[-1]}")
    return None


@backends.register("flash_attention", "cuda", supports=_flash_attention_supports)
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                    cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
                    max_seqlen_q: int | None = None, max_seqlen_k: int | None = None):
    return torch.ops.neva_cuda.flash_attention(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k,
                                               max_seqlen_q, max_seqlen_k)


@backends.register("append_kv_cache", "cuda")
def append_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    torch.ops.neva_cuda.append_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def _projector_supports(image_features: torch.Tensor, *_) -> str | None:
    if image_features.dtype not in (torch.float16, torch.bfloat16):
        return f"the cuda projector GEMMs (tensor cores) take float16 or bfloat16, got {image_features.dtype}"
    return None


@backends.register("project_image_tokens", "cuda", supports=_projector_supports)
def project_image_tokens(image_features: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                         b2: torch.Tensor | None, inputs_embeds: torch.Tensor, image_token_mask: torch.Tensor) -> None:
    torch.ops.neva_cuda.project_image_tokens(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask)
