"""The errors neva_kernels raises (each also a builtin exception type, so callers can catch either), and the checks
of plain int / float arguments that raise them."""
from __future__ import annotations

import math


class NevaError(Exception):
    """Base class of every error raised on purpose by neva_kernels."""


class NevaValueError(NevaError, ValueError):
    """An argument has the wrong shape, rank, device, value range or layout."""


class NevaTypeError(NevaError, TypeError):
    """An argument has the wrong type or dtype."""


class BackendUnavailableError(NevaError, RuntimeError):
    """A backend was requested explicitly but cannot run this call; the message says why."""


class OutOfBlocksError(NevaError, RuntimeError):
    """The paged KV cache has too few free blocks for a request; the allocator is left unchanged."""


def expect_int(where: str, name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum] (either bound optional); bools and floats are refused, since
    True or 2.5 passed for a count is a caller's mistake that would otherwise be silently coerced."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise NevaTypeError(f"{where}: '{name}' must be an int, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise NevaValueError(f"{where}: '{name}' must be {_range_text(minimum, maximum)}, got {value}")
    return value


def expect_finite(where: str, name: str, value, minimum: float | None = None, maximum: float | None = None,
                  *, above_minimum: bool = False) -> float:
    """`value` as a finite float in [minimum, maximum] ((minimum, maximum] with above_minimum)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NevaTypeError(f"{where}: '{name}' must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    too_low = minimum is not None and (value <= minimum if above_minimum else value < minimum)
    if not math.isfinite(value) or too_low or (maximum is not None and value > maximum):
        bounds = _range_text(minimum, maximum, above_minimum)
        raise NevaValueError(f"{where}: '{name}' must be a finite number{' ' + bounds if bounds else ''}, got {value}")
    return value


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (torch's allocator errors run on for lines), or its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _range_text(minimum, maximum, above_minimum: bool = False) -> str:
    low = "(" if above_minimum else "["
    if minimum is not None and maximum is not None:
        return f"in {low}{minimum}, {maximum}]"
    if minimum is not None:
        return f"{'>' if above_minimum else '>='} {minimum}"
    return f"<= {maximum}" if maximum is not None else ""
