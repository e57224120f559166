"""rms_norm(x, weight, eps, residual=None): LLaMA's RMSNorm, optionally fused with the residual add."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from ._library import define
from ._row_norm import check_row_norm_args

OP = "rms_norm"


@define("rms_norm", trace_torch_backend=True)
def _rms_norm(x: Tensor, weight: Tensor, eps: float, backend: str) -> Tensor:
    return backends.implementation(OP, backend)(x, weight, eps)


@torch.library.register_fake(_rms_norm.overload)
def _(x, weight, eps, backend):
    return x.new_empty(x.shape)


@define("fused_add_rms_norm", trace_torch_backend=True)
def _fused_add_rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return backends.implementation(OP, backend)(x, weight, eps, residual)


@torch.library.register_fake(_fused_add_rms_norm.overload)
def _(x, weight, eps, residual, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape)


@define("rms_norm_backward")
def _rms_norm_backward(grad_y: Tensor, h: Tensor, weight: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    return backends.implementation("rms_norm_backward", backend)(grad_y, h, weight, eps)


@torch.library.register_fake(_rms_norm_backward.overload)
def _(grad_y, h, weight, eps, backend):
    return h.new_empty(h.shape), weight.new_empty(weight.shape)


def _save_normalized_input(ctx, inputs, output):
    """Save h, the tensor that was normalized: x itself, or the updated residual x + residual."""
    x, weight, eps, *rest = inputs
    h = x if len(rest) == 1 else output[1]
    ctx.save_for_backward(h, weight)
    ctx.eps, ctx.backend = eps, rest[-1]


def _norm_gradients(ctx, grad_y):
    h, weight = ctx.saved_tensors
    args = (grad_y, h, weight, ctx.eps)
    backend = backends.choose_backward("rms_norm_backward", ctx.backend, h.device, args)
    return _rms_norm_backward(*args, backend)


def _rms_norm_grad(ctx, grad_y):
    grad_x, grad_weight = _norm_gradients(ctx, grad_y)
    return grad_x, grad_weight, None, None


def _fused_add_rms_norm_grad(ctx, grad_y, grad_h):
    grad_from_norm, grad_weight = _norm_gradients(ctx, grad_y)
    grad_sum = grad_from_norm + grad_h  # x and residual both enter through h = x + residual
    return grad_sum, grad_weight, None, grad_sum, None


torch.library.register_autograd(_rms_norm.overload, _rms_norm_grad, setup_context=_save_normalized_input)
torch.library.register_autograd(_fused_add_rms_norm.overload, _fused_add_rms_norm_grad,
                                setup_context=_save_normalized_input)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6, residual: Tensor | None = None, *,
             backend: str | None = None):
    """Normalize the last dimension of x [..., hidden] by its root mean square, then scale by weight [hidden].

    With `residual` (same shape and dtype as x) this computes h = x + residual first and returns (y, h): the
    normalized output and the updated residual stream, in one pass over memory. Accumulation is in float32.
    """
    check_row_norm_args(OP, x, weight, eps, residual)
    args = (x, weight, float(eps)) if residual is None else (x, weight, float(eps), residual)
    chosen = backends.choose(OP, x.device, args, backend)
    return _rms_norm(*args, chosen) if residual is None else _fused_add_rms_norm(*args, chosen)
