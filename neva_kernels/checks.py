"""Argument checks shared by the public ops.

Every message names the op, the argument, what was expected and what was given, e.g.
``rms_norm: 'weight' must have shape [769], got [768]``.

Metadata checks (dtype, rank, shape, device) run in the public functions, so they also run on fake tensors
while torch.compile traces. Checks of tensor *values* (index ranges, counts) need the data; they run inside the
custom ops, and are skipped while a CUDA graph is being captured, while torch.compile traces, or when disabled:
``set_value_checks(False)``, within ``with value_checks(False):``, or ``NEVA_KERNELS_VALUE_CHECKS=0`` (each check
costs a device sync on GPU).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor

from .errors import NevaTypeError, NevaValueError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)

_value_checks = os.environ.get("NEVA_KERNELS_VALUE_CHECKS", "1") != "0"


def set_value_checks(enabled: bool) -> None:
    """Turn the data-dependent checks (index ranges, counts) on or off for all ops."""
    global _value_checks
    _value_checks = bool(enabled)


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """set_value_checks(enabled) inside a with block (e.g. off while timing), the previous setting after it."""
    global _value_checks
    previous = _value_checks
    set_value_checks(enabled)
    try:
        yield
    finally:
        _value_checks = previous


def value_checks_enabled(*tensors: torch.Tensor) -> bool:
    if not _value_checks or torch.compiler.is_compiling():  # a compiled graph cannot stop to read its values
        return False
    on_cuda = any(t is not None and t.is_cuda for t in tensors)
    return not (on_cuda and torch.cuda.is_current_stream_capturing())


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


def shape_str(shape: Sequence) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def expect(condition: bool, op: str, message: str | Callable[[], str], error: type = NevaValueError) -> None:
    """Raise `error` naming `op` unless `condition`. A message that needs formatting is passed as a function
    that builds it, so that a passing check (every call of every op) formats nothing."""
    if not condition:
        raise error(f"{op}: {message if isinstance(message, str) else message()}")


def expect_tensor(op: str, name: str, value, *, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
                  ndim: int | Sequence[int] | None = None) -> torch.Tensor:
    """`value` is a tensor of one of `dtypes` with `ndim` dimensions (one of, when a sequence)."""
    if not isinstance(value, torch.Tensor):
        raise NevaTypeError(f"{op}: '{name}' must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise NevaTypeError(f"{op}: '{name}' must have dtype {_dtype_names(dtypes)}, got {value.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        expect(value.dim() in allowed, op,
               lambda: f"'{name}' must have {' or '.join(map(str, allowed))} dimensions, "
                       f"got {value.dim()} (shape {shape_str(value.shape)})")
    return value


def expect_shape(op: str, name: str, value: torch.Tensor, shape: Sequence, why: str = "") -> None:
    """`value.shape` equals `shape`, where None matches any size."""
    ok = value.dim() == len(shape) and all(e is None or e == s for e, s in zip(shape, value.shape))
    expect(ok, op, lambda: f"'{name}' must have shape {shape_str(shape)}{' ' + why if why else ''}, "
                           f"got {shape_str(value.shape)}")


def expect_same_device(op: str, **tensors) -> None:
    """All given tensors (None entries skipped) live on one device."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        expect(t.device == first.device, op,
               lambda: f"'{name}' must be on the same device as '{first_name}' ({first.device}), got {t.device}")


def expect_same_dtype(op: str, **tensors) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        expect(t.dtype == first.dtype, op,
               lambda: f"'{name}' must have the dtype of '{first_name}' ({first.dtype}), got {t.dtype}", NevaTypeError)


def expect_contiguous(op: str, name: str, value: torch.Tensor, why: str) -> None:
    expect(value.is_contiguous(), op,
           lambda: f"'{name}' must be contiguous ({why}), got strides {tuple(value.stride())}")


def expect_index_range(op: str, name: str, values: torch.Tensor, low: int, high: int) -> None:
    """Every element of `values` lies in [low, high). Reads the data: call only when value checks are on."""
    if values.numel() == 0:
        return
    smallest, largest = int(values.min()), int(values.max())
    expect(low <= smallest and largest < high, op,
           lambda: f"'{name}' values must lie in [{low}, {high}), got values in [{smallest}, {largest}]")


def starts_aligned(t: torch.Tensor, alignment: int = 16) -> bool:
    """Whether the first element of `t` is `alignment`-byte aligned. Tensors without data (fake or meta, while
    tracing) are judged by their storage offset: allocations themselves are aligned."""
    if t.device.type == "meta" or isinstance(t, FakeTensor):
        return t.storage_offset() * t.element_size() % alignment == 0
    return t.data_ptr() % alignment == 0
