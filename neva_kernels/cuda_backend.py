"""The cuda backend: hand-written CUDA C++ in the compiled extension neva_kernels._C (torch.ops.neva_cuda)."""
from __future__ import annotations

import importlib
import importlib.util
from typing import NamedTuple

import torch

from . import backends
from .checks import starts_aligned
from .reference import lse_shape


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

class CompiledShapes(NamedTuple):
    """What the extension's kernels are compiled for, as _C reports it (torch.ops.neva_cuda.compiled_shapes)."""
    decode_head_dims: tuple[int, ...] = ()
    decode_max_group: int = 0
    flash_head_dims: tuple[int, ...] = ()  # the mma.sync (sm80) kernel
    flash_sm90_head_dims: tuple[int, ...] = ()  # the wgmma kernel, picked on compute capability 9.0


def _compiled_shapes() -> CompiledShapes:
    decode, group, flash, flash_sm90 = torch.ops.neva_cuda.compiled_shapes()
    return CompiledShapes(tuple(decode), group, tuple(flash), tuple(flash_sm90))


def _flash_attention_outputs(q: torch.Tensor, cu_seqlens_q: torch.Tensor | None):
    """Empty (out, lse) of a flash attention call."""
    return q.new_empty(q.shape), q.new_empty(lse_shape(q, packed=cu_seqlens_q is not None), dtype=torch.float32)


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
    def _(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale, num_splits=0):
        return q.new_empty(q.shape)

    @torch.library.register_fake("neva_cuda::flash_attention")
    def _(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, kernel=0):
        return _flash_attention_outputs(q, cu_seqlens_q)

    @torch.library.register_fake("neva_cuda::append_kv_cache")
    def _(k, v, k_cache, v_cache, slot_mapping):
        return None

    @torch.library.register_fake("neva_cuda::project_image_tokens")
    def _(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask, kernel=0):
        return None


COMPILED = CompiledShapes()  # nothing, unless the extension loads and is current
if LOAD_ERROR is None:
    try:
        _register_fakes()
        COMPILED = _compiled_shapes()
    except (RuntimeError, AttributeError) as error:  # an extension built from older sources lacks an op
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


def _listed(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values))


def _decode_supports(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *_) -> str | None:
    head_dim, group = q.shape[-1], q.shape[1] // k_cache.shape[2]
    if head_dim not in COMPILED.decode_head_dims:
        return f"the cuda paged decode is compiled for head_dim {_listed(COMPILED.decode_head_dims)}, got {head_dim}"
    if group > COMPILED.decode_max_group:
        return f"the cuda paged decode serves at most {COMPILED.decode_max_group} query heads per KV head, got {group}"
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not starts_aligned(cache):
            return f"the cuda paged decode copies pages in 16-byte units: '{name}' must start 16-byte aligned"
    return None


@backends.register("paged_decode_attention", "cuda", supports=_decode_supports)
def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    return torch.ops.neva_cuda.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale)


def _flash_attention_supports(q: torch.Tensor, *_) -> str | None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"the cuda flash_attention kernels (tensor cores) take float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] not in COMPILED.flash_head_dims:
        return (f"the cuda flash_attention kernels are compiled for head_dim {_listed(COMPILED.flash_head_dims)}, "
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
