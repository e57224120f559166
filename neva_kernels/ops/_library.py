"""The registry of neva's custom ops (torch.ops.neva.*): torch.library.Library.define + impl.

torch.library.custom_op would infer the same schemas and register the same kernels, but every call of its
ops passes through Python wrappers (a dynamo-disabled frame, a check that no output aliases an input) on top of
the dispatch; the "registration" case of benchmarks/host_overhead.py measures both against a C++-registered op.
Fakes and autograd are registered with torch.library.register_fake / register_autograd on `Op.overload`, so
torch.compile, FakeTensorMode and opcheck see the ops.

A public function calls its op through `Op`, which skips the dispatcher when it would only call the one
implementation anyway: a plain eager call (nothing traced or transformed, no fake or subclass tensor, nothing
to differentiate). That is every call of a decode step, where the dispatch costs as much as a small op's maths.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

_LIBRARY = torch.library.Library("neva", "DEF")
# Tensor types whose ops need no dispatch of their own (nn.Parameter overrides nothing).
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _dispatcher_needed(args: tuple) -> bool:
    """Whether an eager call (torch.compile not tracing) must go through torch's dispatcher: under a dispatch mode
    (FakeTensorMode, functionalization) or a functorch transform, for tensor subclasses, and when autograd must
    record the call."""
    if _get_current_dispatch_mode() is not None or torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    grad = torch.is_grad_enabled()
    return any(type(a) not in _PLAIN_TENSORS or (grad and a.requires_grad) for a in args
               if isinstance(a, torch.Tensor))


class Op:
    """A registered op: call it as the function it wraps; `overload` is torch.ops.neva.<name>.default."""

    def __init__(self, fn: Callable, overload: torch._ops.OpOverload, trace_torch_backend: bool):
        self.fn, self.overload, self.trace_torch_backend = fn, overload, trace_torch_backend

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.fn(*args) if self.trace_torch_backend and args[-1] == "torch" else self.overload(*args)
        return self.overload(*args) if _dispatcher_needed(args) else self.fn(*args)


def define(name: str, mutates_args: Iterable[str] = (), trace_torch_backend: bool = False
           ) -> Callable[[Callable], Op]:
    """Decorator: register `fn` (type-annotated as for torch.library.custom_op) as torch.ops.neva.<name>.

    The one implementation runs on every device (the backend argument chooses the kernel).
    trace_torch_backend: while torch.compile traces a call on the torch backend, trace its PyTorch maths (which
    the compiler then fuses, as it would a model written in PyTorch) instead of recording one opaque op; only
    for ops whose torch backend has no data-dependent Python (see neva_kernels.torch_backend).
    """
    def wrap(fn: Callable) -> Op:
        _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=tuple(mutates_args)))
        _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        return Op(fn, getattr(torch.ops.neva, name).default, trace_torch_backend)
    return wrap
