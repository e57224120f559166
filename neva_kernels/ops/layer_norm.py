"""layer_norm(x, weight, bias, eps, residual=None, zero_centered_weight=False): LayerNorm (CLIP's, and Nemotron's
LayerNorm1p with y = norm(x) * (1 + weight) + bias), optionally fused with the residual add as rms_norm is."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from ..checks import expect
from ._library import define
from ._row_norm import check_row_norm_args

OP = "layer_norm"


@define("layer_norm", trace_torch_backend=True)
def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, zero_centered_weight: bool,
                backend: str) -> Tensor:
    return backends.implementation(OP, backend)(x, weight, bias, eps, None, zero_centered_weight)


@torch.library.register_fake(_layer_norm.overload)
def _(x, weight, bias, eps, zero_centered_weight, backend):
    return x.new_empty(x.shape)


@define("fused_add_layer_norm", trace_torch_backend=True)
def _fused_add_layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, zero_centered_weight: bool,
                          residual: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return backends.implementation(OP, backend)(x, weight, bias, eps, residual, zero_centered_weight)


@torch.library.register_fake(_fused_add_layer_norm.overload)
def _(x, weight, bias, eps, zero_centered_weight, residual, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape)


@define("layer_norm_backward")
def _layer_norm_backward(grad_y: Tensor, h: Tensor, weight: Tensor, eps: float, zero_centered_weight: bool,
                         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return backends.implementation("layer_norm_backward", backend)(grad_y, h, weight, eps, zero_centered_weight)


@torch.library.register_fake(_layer_norm_backward.overload)
def _(grad_y, h, weight, eps, zero_centered_weight, backend):
    return h.new_empty(h.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _save_normalized_input(ctx, inputs, output):
    """Save h, the tensor that was normalized: x itself, or the updated residual x + residual."""
    x, weight, bias, eps, zero_centered_weight, *rest = inputs
    h = x if len(rest) == 1 else output[1]
    ctx.save_for_backward(h, weight)
    ctx.eps, ctx.zero_centered_weight, ctx.has_bias, ctx.backend = eps, zero_centered_weight, bias is not None, rest[-1]


def _norm_gradients(ctx, grad_y):
    """(grad_h, grad_weight, grad_bias or None when the call had no bias)."""
    h, weight = ctx.saved_tensors
    args = (grad_y, h, weight, ctx.eps, ctx.zero_centered_weight)
    backend = backends.choose_backward("layer_norm_backward", ctx.backend, h.device, args)
    grad_h, grad_weight, grad_bias = _layer_norm_backward(*args, backend)
    return grad_h, grad_weight, grad_bias if ctx.has_bias else None


def _layer_norm_grad(ctx, grad_y):
    grad_x, grad_weight, grad_bias = _norm_gradients(ctx, grad_y)
    return grad_x, grad_weight, grad_bias, None, None, None


def _fused_add_layer_norm_grad(ctx, grad_y, grad_h):
    grad_from_norm, grad_weight, grad_bias = _norm_gradients(ctx, grad_y)
    grad_sum = grad_from_norm + grad_h  # x and residual both enter through h = x + residual
    return grad_sum, grad_weight, grad_bias, None, None, grad_sum, None


torch.library.register_autograd(_layer_norm.overload, _layer_norm_grad, setup_context=_save_normalized_input)
torch.library.register_autograd(_fused_add_layer_norm.overload, _fused_add_layer_norm_grad,
                                setup_context=_save_normalized_input)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-5, residual: Tensor | None = None,
               zero_centered_weight: bool = False, *, backend: str | None = None):
    """Normalize the last dimension of x [..., hidden] to zero mean and unit (biased) variance, then scale by
    weight [hidden] and shift by bias [hidden] (None: no shift), as torch.nn.LayerNorm does.

    zero_centered_weight=True scales by 1 + weight instead (NVIDIA's LayerNorm1p: the stored weight is centred on
    zero). With `residual` (same shape and dtype as x) this computes h = x + residual first and returns (y, h): the
    normalized output and the updated residual stream, in one pass over memory. Accumulation is in float32.
    """
    check_row_norm_args(OP, x, weight, eps, residual, bias)
    expect(isinstance(zero_centered_weight, bool), OP,
           lambda: f"'zero_centered_weight' must be a bool, got {type(zero_centered_weight).__name__}")
    head = (x, weight, bias, float(eps))
    chosen = backends.choose(OP, x.device, head + (residual, zero_centered_weight), backend)
    if residual is None:
        return _layer_norm(*head, zero_centered_weight, chosen)
    return _fused_add_layer_norm(*head, zero_centered_weight, residual, chosen)
