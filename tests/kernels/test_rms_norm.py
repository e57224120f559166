"""rms_norm (plain and fused with the residual add) on each kernel backend against the reference; Triton's backward
and autograd too.

Truth is the reference in float64; the baseline of the tolerance rule is the reference run on the input dtype
(float32 arithmetic, one rounding at the end), so the kernels may be at most twice as far off as that, plus the
floor. Hidden 769 puts each row at a different 16-byte offset (unaligned head, vectors, scalar tail, unaligned
weight vectors); 5120 is a LLaMA width; 70000 is past what cuda's row cached in registers holds (its streaming
variant).
"""
import itertools

import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends, reference
from neva_kernels.triton_kernels import memory_bound_configs as configs
from neva_kernels.triton_kernels import rms_norm as triton_rms_norm
from tests.helpers import BACKENDS, assert_close_by_rule, on_backend, strided
from tests.kernels.problems import (DEVICE, GPU_DTYPES, INTERPRETER_DTYPES, check_rms_norm, device_for,
                                    rms_norm_inputs)

FORWARD_CASES = [
    *(on_backend("triton", dtype, shape) for dtype, shape in
      itertools.product(INTERPRETER_DTYPES, [(3, 769), (2, 3, 5120), (1, 64), (4, 1)])),
    *(on_backend("cuda", dtype, shape) for dtype, shape in
      itertools.product(GPU_DTYPES, [(3, 769), (2, 3, 5120), (4, 1), (5, 8), (2, 70000)])),
]


@pytest.mark.parametrize("backend,dtype,shape", FORWARD_CASES)
@pytest.mark.parametrize("fused", [False, True])
def test_forward_matches_reference(backend, dtype, shape, fused, poisoned_outputs):
    x, weight, residual = rms_norm_inputs(shape, dtype, device_for(backend))
    check_rms_norm(x, weight, residual if fused else None, backend=backend)


@pytest.mark.parametrize("backend,dtype", [on_backend("triton", torch.float16), on_backend("cuda", torch.bfloat16)])
@pytest.mark.parametrize("fused", [False, True])
def test_strided_and_offset_inputs(backend, dtype, fused, poisoned_outputs):
    device = device_for(backend)
    x, weight, residual = rms_norm_inputs((5, 769), dtype, device)
    wide = torch.randn(5, 1000, dtype=dtype, device=device)
    wide[:, :769] = x
    # x rows 2000 bytes apart (not co-aligned with the output); residual and weight: last-dim stride 2.
    check_rms_norm(wide[:, :769], strided(weight), strided(residual) if fused else None, backend=backend)
    # Rows 16-byte co-aligned with the output but with a gap between them.
    gap = torch.randn(5, 784, dtype=dtype, device=device)
    gap[:, :768] = x[:, :768]
    check_rms_norm(gap[:, :768], weight[:768], residual[:, :768] if fused else None, backend=backend)
    # Starting 2 bytes past an allocation: an unaligned first row.
    flat = torch.randn(1 + 5 * 769, dtype=dtype, device=device)
    check_rms_norm(flat[1:].view(5, 769), weight, residual if fused else None, backend=backend)


@pytest.mark.sanitizer
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
def test_small_rows(backend, fused, poisoned_outputs):
    x, weight, residual = rms_norm_inputs((7, 37), torch.float16, device_for(backend))
    check_rms_norm(x, weight, residual if fused else None, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_outputs(backend):
    x, weight, residual = rms_norm_inputs((0, 769), torch.float32, device_for(backend))
    y, h = nk.rms_norm(x, weight, residual=residual, backend=backend)
    assert y.shape == h.shape == (0, 769)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_rows(backend, poisoned_outputs):
    x, weight, residual = rms_norm_inputs((70000, 64), torch.float16, "cuda")
    check_rms_norm(x, weight, residual, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("hidden", [769, 4096, 5120, 8192, 16384])
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_model_sizes_match_reference(backend, dtype, hidden, fused, poisoned_outputs):
    x, weight, residual = rms_norm_inputs((2048, hidden), dtype, "cuda")
    check_rms_norm(x, weight, residual if fused else None, backend=backend)


# ---- Triton's backward (cuda has none: autograd after a cuda forward runs the torch backward) -------------

def check_backward(grad_y, h, weight, eps=1e-6):
    grad_h, grad_weight = triton_rms_norm.rms_norm_backward(grad_y, h, weight, eps)
    truth = reference.rms_norm_backward(grad_y.double(), h.double(), weight.double(), eps)
    baseline = reference.rms_norm_backward(grad_y, h, weight, eps)
    assert_close_by_rule(grad_h, truth[0], baseline[0], "grad_h")
    assert_close_by_rule(grad_weight, truth[1], baseline[1], "grad_weight")


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("rows,hidden,rows_per_program", [(10, 769, 3), (7, 5120, 1), (5, 64, 8)])
def test_triton_backward_matches_reference(dtype, rows, hidden, rows_per_program, monkeypatch, poisoned_outputs):
    """rows_per_program is forced so programs walk several rows, the last one fewer (10 = 3 + 3 + 3 + 1)."""
    monkeypatch.setattr(configs, "row_norm_backward_rows_per_program", lambda rows, device: rows_per_program)
    h, weight, grad_y = rms_norm_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("rows,hidden", [(4096, 4096), (3000, 5120), (333, 769)])
def test_gpu_triton_backward_matches_reference(dtype, rows, hidden, poisoned_outputs):
    h, weight, grad_y = rms_norm_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("fused", [False, True])
def test_autograd_through_triton_gives_reference_gradients(dtype, fused):
    x, weight, residual = rms_norm_inputs((2, 3, 769), dtype)
    grad_y, grad_h = torch.randn_like(x), torch.randn_like(x)

    def gradients(backend, cast):
        leaves = [cast(t).detach().requires_grad_(True) for t in (x, weight, residual)]
        out = nk.rms_norm(leaves[0], leaves[1], 1e-6, residual=leaves[2] if fused else None, backend=backend)
        outputs, grads = ((out[0], out[1]), (grad_y, grad_h)) if fused else ((out,), (grad_y,))
        torch.autograd.backward(outputs, [cast(g) for g in grads])
        return [leaf.grad for leaf in leaves[:3 if fused else 2]]

    triton_grads = gradients("triton", lambda t: t)
    truth = gradients("torch", lambda t: t.double())
    baseline = gradients("torch", lambda t: t)
    for name, got, want, base in zip(("x", "weight", "residual"), triton_grads, truth, baseline):
        assert_close_by_rule(got, want, base, f"grad of {name}")


@pytest.mark.parametrize("hidden,expected", [(769, "triton"), (configs.RMS_NORM_BACKWARD_MAX_HIDDEN + 1, "torch")])
def test_backward_after_a_triton_forward_runs_on_triton_where_the_row_fits(hidden, expected):
    h = torch.randn(3, hidden, device=DEVICE)
    args = (torch.randn_like(h), h, torch.rand(hidden, device=DEVICE), 1e-6)
    assert backends.choose_backward("rms_norm_backward", "triton", h.device, args) == expected


def test_triton_refuses_rows_wider_than_its_register_tile_with_the_reason():
    x = torch.randn(1, configs.ROW_NORM_MAX_HIDDEN + 1)
    reason = backends.why_unable("rms_norm", "triton", torch.device("cuda"), (x, x[0], 1e-6))
    assert reason is not None and "hidden size" in reason


@pytest.mark.parametrize("fused", [False, True])
def test_custom_op_contract_holds_on_triton(fused):
    x, weight, residual = (t.requires_grad_(True) for t in rms_norm_inputs((3, 769), torch.float32))
    if fused:
        torch.library.opcheck(torch.ops.neva.fused_add_rms_norm, (x, weight, 1e-6, residual, "triton"))
    else:
        torch.library.opcheck(torch.ops.neva.rms_norm, (x, weight, 1e-6, "triton"))
