"""rms_norm and its backward on Triton: the row-norm kernels of row_norm.py without mean subtraction."""
from __future__ import annotations

from torch import Tensor

from .. import backends
from . import memory_bound_configs as configs
from . import row_norm


@backends.register("rms_norm", "triton",
                   supports=lambda x, *_: row_norm.row_fits(x.shape[-1], configs.ROW_NORM_MAX_HIDDEN))
def rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None):
    return row_norm.forward(x, weight, None, eps, residual, center=False, zero_centered_weight=False)


@backends.register("rms_norm_backward", "triton",
                   supports=lambda grad_y, h, *_: row_norm.row_fits(h.shape[-1], configs.RMS_NORM_BACKWARD_MAX_HIDDEN))
def rms_norm_backward(grad_y: Tensor, h: Tensor, weight: Tensor, eps: float):
    grad_h, grad_weight, _ = row_norm.backward(grad_y, h, weight, eps, center=False, zero_centered_weight=False)
    return grad_h, grad_weight
