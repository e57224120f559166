"""The registry of neva's custom ops (torch.ops.neva.*): torch.library.Library.define + impl.

torch.library.custom_op would infer the same schemas and register the same kernels, but every call of its
ops passes through Python wrappers (a dynamo-disabled frame, a check that no output aliases an input) on top of
the dispatch; the "registration" case of benchmarks/host_overhead.py measures both against a C++-registered op.
Fakes and autograd are registered with torch.library.register_fake / register_autograd, so torch.compile,
FakeTensorMode and opcheck see the same ops as before.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

_LIBRARY = torch.library.Library("neva", "DEF")


def define(name: str, mutates_args: Iterable[str] = ()) -> Callable[[Callable], torch._ops.OpOverload]:
    """Decorator: register `fn` (type-annotated as for torch.library.custom_op) as torch.ops.neva.<name>.

    Returns the op's OpOverload; the one implementation runs on every device (the backend argument chooses
    the kernel).
    """
    def wrap(fn: Callable) -> torch._ops.OpOverload:
        _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=tuple(mutates_args)))
        _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        return getattr(torch.ops.neva, name).default
    return wrap
