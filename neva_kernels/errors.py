"""The errors neva_kernels raises. Each is also a builtin exception type, so callers can catch either."""


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
