"""Autograd for the functional custom ops by recomputation through the reference.

The gradient of an op is the gradient of the function it computes, whichever backend ran the forward, so the
reference gives it: backward re-runs the reference on the saved inputs and differentiates that. This costs a
second forward in the reference's precision; ops with a hand-written backward register it instead.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def register_recompute_autograd(op, reference: Callable) -> None:
    """Give custom op `op(*args, backend)` the gradient of `reference(*args)`."""

    def setup_context(ctx, inputs, output):
        args = inputs[:-1]  # the trailing argument is the backend name
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
        ctx.constants = [None if t else a for t, a in zip(ctx.is_tensor, args)]
        ctx.save_for_backward(*(a for t, a in zip(ctx.is_tensor, args) if t))

    def backward(ctx, *grad_outputs):
        saved = iter(ctx.saved_tensors)
        args, wanted = [], []
        for i, (is_tensor, constant) in enumerate(zip(ctx.is_tensor, ctx.constants)):
            if not is_tensor:
                args.append(constant)
                continue
            tensor = next(saved).detach()
            if ctx.needs_input_grad[i]:
                tensor.requires_grad_(True)
                wanted.append((i, tensor))
            args.append(tensor)
        with torch.enable_grad():
            outputs = reference(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], [t for _, t in wanted], [g for _, g in pairs],
                                    allow_unused=True) if pairs else [None] * len(wanted)
        result = [None] * (len(args) + 1)
        for (i, _), grad in zip(wanted, grads):
            result[i] = grad
        return tuple(result)

    torch.library.register_autograd(op, backward, setup_context=setup_context)
