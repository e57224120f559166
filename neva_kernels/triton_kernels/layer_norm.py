"""layer_norm and its backward on Triton: the row-norm kernels of row_norm.py with mean subtraction."""
from __future__ import annotations

from torch import Tensor

from .. import backends
from . import memory_bound_configs as configs
from . import row_norm


@backends.register("layer_norm", "triton",
                   supports=lambda x, *_: row_norm.row_fits(x.shape[-1], configs.ROW_NORM_MAX_HIDDEN))
def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, residual: Tensor | None = None,
               zero_centered_weight: bool = False):
    return row_norm.forward(x, weight, bias, eps, residual, center=True, zero_centered_weight=zero_centered_weight)


@backends.register("layer_norm_backward", "triton",
                   supports=lambda grad_y, h, *_: row_norm.row_fits(h.shape[-1],
                                                                    configs.LAYER_NORM_BACKWARD_MAX_HIDDEN))
def layer_norm_backward(grad_y: Tensor, h: Tensor, weight: Tensor, eps: float, zero_centered_weight: bool = False):
    return row_norm.backward(grad_y, h, weight, eps, center=True, zero_centered_weight=zero_centered_weight)
