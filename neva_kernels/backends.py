"""Which backend runs an op: the registry of implementations and the choice per call.

Three backends implement the same contract: ``cuda`` (the compiled extension ``neva_kernels._C``), ``triton``
and ``torch`` (the pure-PyTorch reference). Per call the first *able* backend in the preference order runs:
cuda > triton > torch, where a cuda kernel counts only on GPU architectures where the committed benchmark results
measured it (``measured_preferences.json``; elsewhere it is opt-in). On CPU tensors it is always ``torch`` (the
Triton interpreter is a debugging tool, never an automatic pick).

Overrides, strongest first:
  1. ``backend=`` on the call;
  2. a per-op setting: ``NEVA_KERNELS_BACKEND="rms_norm=cuda,flash_attention=triton"`` or ``set_backend(..., op=)``;
  3. a global setting: ``NEVA_KERNELS_BACKEND=torch`` or ``set_backend("torch")``.
Settings 2 and 3 can also hold for a block only: ``with use_backend("torch"):``. NEVA_KERNELS_BACKEND is read at
the first op call or backend setting (or read_environment()), so a bad value raises there, not at import.
A requested backend that cannot run the call raises BackendUnavailableError saying why: never a silent fallback.

What depends only on (op, device, dtype, requested backend) — which backends are built, run on that device and
dtype, and in which order — is resolved on the first call and cached; a call then only asks the shape-dependent
`supports` rules of its candidates (the torch backend has none), so the decode step pays a dict lookup per op.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .architecture import architecture
from .errors import BackendUnavailableError, NevaValueError

__all__ = ["BACKENDS", "OPS", "BackendUnavailableError", "choose", "read_environment", "register", "set_backend",
           "use_backend"]

BACKENDS = ("cuda", "triton", "torch")
OPS = ("rms_norm", "layer_norm", "flash_attention", "paged_decode_attention", "append_kv_cache", "rotary_embedding",
       "project_image_tokens")
# Gradients with their own kernels; a backend without one leaves the backward to the torch reference.
BACKWARD_OPS = ("rms_norm_backward", "layer_norm_backward", "flash_attention_backward")


@dataclass(frozen=True)
class Implementation:
    fn: Callable
    # supports(*op_args) -> None when this implementation can run the call, else the reason it cannot.
    supports: Callable[..., str | None] | None = None


_registry: dict[tuple[str, str], Implementation] = {}
# (op, device, dtype, requested backend or None) -> the candidates in order: (backend, its shape-dependent
# `supports` rule or None, why it cannot run here or None). Cleared whenever a backend registers or goes missing.
_candidates: dict[tuple, tuple[tuple[str, Callable[..., str | None] | None, str | None], ...]] = {}
# Why a whole backend is missing on this machine (set by the module that provides it), e.g. "triton is not installed".
_backend_missing: dict[str, str] = {
    "cuda": "neva_kernels._C is not loaded",
    "triton": "triton is not loaded",
}


def register(op: str, backend: str, supports: Callable[..., str | None] | None = None):
    """Decorator: `fn` implements `op` for `backend`, with the op's reference signature."""
    if op not in OPS + BACKWARD_OPS or backend not in BACKENDS:
        raise NevaValueError(f"register: unknown op '{op}' or backend '{backend}'")

    def wrap(fn: Callable) -> Callable:
        _registry[(op, backend)] = Implementation(fn, supports)
        _candidates.clear()
        return fn
    return wrap


def set_backend_missing(backend: str, reason: str | None) -> None:
    """Record why `backend` cannot run anything here (None: it is present)."""
    if reason is None:
        _backend_missing.pop(backend, None)
    else:
        _backend_missing[backend] = reason
    _candidates.clear()


def implementation(op: str, backend: str) -> Callable:
    return _registry[(op, backend)].fn


# ---- the user's settings ---------------------------------------------------------------------------------

# Triton decides at decoration time whether @triton.jit kernels run in its CPU interpreter.
_triton_interpreter = os.environ.get("TRITON_INTERPRET", "0") == "1"

_global_choice: str | None = None
_per_op_choice: dict[str, str] = {}


def _check_backend_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise NevaValueError(f"{source}: backend must be one of {', '.join(BACKENDS)}, got '{name}'")
    return name


def _store(backend: str | None, op: str | None) -> None:
    global _global_choice
    if op is None:
        _global_choice = backend
    elif backend is None:
        _per_op_choice.pop(op, None)
    else:
        _per_op_choice[op] = backend


def set_backend(backend: str | None, op: str | None = None) -> None:
    """Force `backend` for every op (op=None) or for one op; None restores the automatic choice."""
    if backend is not None:
        _check_backend_name(backend, "set_backend")
    if op is not None and op not in OPS:
        raise NevaValueError(f"set_backend: op must be one of {', '.join(OPS)}, got '{op}'")
    read_environment()  # first, so that this call overrides it
    _store(backend, op)


@contextmanager
def use_backend(backend: str, op: str | None = None) -> Iterator[None]:
    """Within the block, force `backend` as set_backend does; the previous setting comes back afterwards."""
    read_environment()
    previous = _global_choice if op is None else _per_op_choice.get(op)
    set_backend(backend, op)
    try:
        yield
    finally:
        set_backend(previous, op)


_environment_read = False


def _read_environment() -> None:
    """Parse NEVA_KERNELS_BACKEND ('triton', or 'rms_norm=cuda,flash_attention=triton', or both mixed) and apply
    it; a bad entry raises before any is applied, and the variable is read again on the next use."""
    global _environment_read
    text = os.environ.get("NEVA_KERNELS_BACKEND", "").strip()
    settings = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        op, _, name = entry.rpartition("=")
        _check_backend_name(name.strip(), "NEVA_KERNELS_BACKEND")
        if op and op.strip() not in OPS:
            raise NevaValueError(f"NEVA_KERNELS_BACKEND: op must be one of {', '.join(OPS)}, got '{op.strip()}'")
        settings.append((name.strip(), op.strip() or None))
    for backend, op in settings:
        _store(backend, op)
    _environment_read = True


def read_environment() -> None:
    """Apply NEVA_KERNELS_BACKEND unless done already; raises NevaValueError naming a bad value. Ops and the
    backend settings call it; a program calls it to report a bad value before doing any work."""
    if not _environment_read:
        _read_environment()


# ---- the choice per call ---------------------------------------------------------------------------------

def _float_dtype(args: tuple) -> torch.dtype:
    """The dtype an op call computes in: that of its first floating-point tensor (every op's first argument)."""
    first = args[0]
    if isinstance(first, torch.Tensor) and first.is_floating_point():
        return first.dtype
    return next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())


def _kernel_device_rule(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """The compiled backends run on CUDA tensors of fp16/bf16/fp32 (Triton also under its CPU interpreter)."""
    if dtype == torch.float64:
        return f"the {backend} backend has no float64 kernels (the torch backend has)"
    if device.type == "cuda":
        return None
    if backend == "triton" and device.type == "cpu" and _triton_interpreter:
        # The interpreter computes bf16 arithmetic wrongly (see ENVIRONMENT.md): refuse rather than mislead.
        return "the Triton CPU interpreter computes bfloat16 wrongly" if dtype == torch.bfloat16 else None
    hint = "; set TRITON_INTERPRET=1 before importing neva_kernels to run it" if backend == "triton" else ""
    return f"the {backend} backend runs on CUDA tensors, got tensors on {device}{hint}"


def _why_unable_here(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `backend` cannot run `op` on `device` in `dtype` whatever the shapes (None: it may, see `supports`)."""
    if backend in _backend_missing:
        return _backend_missing[backend]
    if (op, backend) not in _registry:
        return f"the {backend} backend has no implementation of {op}"
    return None if backend == "torch" else _kernel_device_rule(backend, device, dtype)


def why_unable(op: str, backend: str, device: torch.device, args: tuple) -> str | None:
    """None when `backend` can run `op(*args)` on `device`, else the reason it cannot."""
    reason = _why_unable_here(op, backend, device, _float_dtype(args))
    if reason is not None:
        return reason
    supports = _registry[(op, backend)].supports
    return supports(*args) if supports else None


def _load_measured_preferences() -> dict:
    path = os.path.join(os.path.dirname(__file__), "measured_preferences.json")
    with open(path) as f:
        return json.load(f)["architectures"]


# {"sm90": {"rms_norm": ["cuda", "triton"], ...}}: per GPU architecture and op, the backends in the order the
# committed benchmark results ranked them (scripts/update_preferences.py writes it from benchmarks/results/).
_measured = _load_measured_preferences()


def _preference(op: str, device: torch.device) -> tuple[str, ...]:
    """The automatic order: on CPUs torch only; on GPUs the measured order where there is one, else triton first.

    A hand-written CUDA kernel is picked automatically only on architectures where it was run and measured: before
    that it is opt-in (backend="cuda"), so a kernel that never ran on a GPU never answers a user by surprise.
    """
    if device.type != "cuda":
        return ("torch",)
    measured = tuple(_measured.get(architecture(device), {}).get(op, ()))
    return measured + tuple(b for b in ("triton", "torch") if b not in measured)


def _resolve(op: str, device: torch.device, dtype: torch.dtype, requested: str | None) -> tuple:
    if requested is not None:
        _check_backend_name(requested, op)
        reason = _why_unable_here(op, requested, device, dtype)
        return ((requested, None if reason else _registry[(op, requested)].supports, reason),)
    return tuple((backend, _registry[(op, backend)].supports, None) for backend in _preference(op, device)
                 if _why_unable_here(op, backend, device, dtype) is None)


def choose(op: str, device: torch.device, args: tuple, requested: str | None = None) -> str:
    """The backend that runs `op(*args)`: the requested one (per call, per op, global) or the best able one."""
    read_environment()
    requested = requested or _per_op_choice.get(op) or _global_choice
    key = (op, device, _float_dtype(args), requested)
    candidates = _candidates.get(key)
    if candidates is None:
        candidates = _candidates[key] = _resolve(*key)
    for backend, supports, reason in candidates:
        if reason is None and supports is not None:
            reason = supports(*args)
        if reason is None:
            return backend
        if requested is not None:
            raise BackendUnavailableError(f"{op}: backend '{requested}' was requested but cannot run this call: "
                                          f"{reason}")
    raise BackendUnavailableError(f"{op}: no backend can run this call on {device}")


def choose_backward(op: str, forward_backend: str, device: torch.device, args: tuple) -> str:
    """The backend of a backward op: the forward's, when it has a backward kernel that can run, else torch."""
    return forward_backend if why_unable(op, forward_backend, device, args) is None else "torch"
