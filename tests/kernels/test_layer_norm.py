"""layer_norm (plain, fused with the residual add, zero-centred weight, with and without bias) on each kernel backend
against the reference; Triton's backward and autograd too.

Truth is the reference in float64; the baseline of the tolerance rule is the reference run on the input dtype
(float32 arithmetic, one rounding at the end). Hidden 769 puts each row at a different 16-byte offset (unaligned
head, vectors, scalar tail, scalar weight and bias); 1024 / 4096 / 6144 / 8192 are CLIP-L's and Nemotron widths;
70000 is past what cuda's row cached in registers holds (its streaming variant, which re-reads the row for the
variance).
"""
import itertools

import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends, reference
from neva_kernels.triton_kernels import layer_norm as triton_layer_norm
from neva_kernels.triton_kernels import memory_bound_configs as configs
from tests.helpers import BACKENDS, assert_close_by_rule, on_backend, strided
from tests.kernels.problems import (DEVICE, GPU_DTYPES, INTERPRETER_DTYPES, LAYER_NORM_VARIANTS, check_layer_norm,
                                    check_rms_norm, device_for, layer_norm_inputs, rms_norm_inputs)

FORWARD_CASES = [
    *(on_backend("triton", dtype, shape) for dtype, shape in
      itertools.product(INTERPRETER_DTYPES, [(3, 769), (2, 3, 1024), (1, 64), (4, 1), (2, 6144)])),
    *(on_backend("cuda", dtype, shape) for dtype, shape in
      itertools.product(GPU_DTYPES, [(3, 769), (2, 3, 1024), (5, 4096), (4, 6144), (3, 8192), (4, 1), (5, 8),
                                     (2, 70000)])),
]


@pytest.mark.parametrize("backend,dtype,shape", FORWARD_CASES)
@pytest.mark.parametrize("with_bias,zero_centered", LAYER_NORM_VARIANTS)
@pytest.mark.parametrize("fused", [False, True])
def test_forward_matches_reference(backend, dtype, shape, with_bias, zero_centered, fused, poisoned_outputs):
    x, weight, bias, residual = layer_norm_inputs(shape, dtype, device_for(backend))
    check_layer_norm(x, weight, bias if with_bias else None, residual if fused else None, zero_centered,
                     backend=backend)


@pytest.mark.parametrize("backend,dtype", [on_backend("triton", torch.float16), on_backend("cuda", torch.bfloat16)])
@pytest.mark.parametrize("fused", [False, True])
def test_strided_and_offset_inputs(backend, dtype, fused, poisoned_outputs):
    device = device_for(backend)
    x, weight, bias, residual = layer_norm_inputs((5, 769), dtype, device)
    wide = torch.randn(5, 1000, dtype=dtype, device=device)
    wide[:, :769] = x
    # x rows 2000 bytes apart (not co-aligned with the output); residual, weight and bias: last-dim stride 2.
    for zero_centered in (False, True):
        check_layer_norm(wide[:, :769], strided(weight), strided(bias), strided(residual) if fused else None,
                         zero_centered, backend=backend)
    # Rows 16-byte co-aligned with the output but with a gap between them.
    gap = torch.randn(5, 784, dtype=dtype, device=device)
    gap[:, :768] = x[:, :768]
    check_layer_norm(gap[:, :768], weight[:768], bias[:768], residual[:, :768] if fused else None, True,
                     backend=backend)
    # Starting 2 bytes past an allocation: an unaligned first row; a bias that starts unaligned too.
    flat = torch.randn(1 + 5 * 769, dtype=dtype, device=device)
    shifted_bias = torch.randn(770, dtype=dtype, device=device)[1:]
    check_layer_norm(flat[1:].view(5, 769), weight, shifted_bias, residual if fused else None, True, backend=backend)


@pytest.mark.sanitizer
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
def test_small_rows(backend, fused, poisoned_outputs):
    x, weight, bias, residual = layer_norm_inputs((7, 37), torch.float16, device_for(backend))
    check_layer_norm(x, weight, bias, residual if fused else None, True, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_outputs(backend):
    x, weight, bias, residual = layer_norm_inputs((0, 769), torch.float32, device_for(backend))
    y, h = nk.layer_norm(x, weight, bias, residual=residual, backend=backend)
    assert y.shape == h.shape == (0, 769)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_rows(backend, poisoned_outputs):
    x, weight, bias, residual = layer_norm_inputs((70000, 64), torch.float16, "cuda")
    check_layer_norm(x, weight, bias, residual, False, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("hidden", [769, 1024, 4096, 6144, 8192, 16384])
@pytest.mark.parametrize("with_bias,zero_centered", LAYER_NORM_VARIANTS)
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_model_sizes_match_reference(backend, dtype, hidden, with_bias, zero_centered, fused, poisoned_outputs):
    x, weight, bias, residual = layer_norm_inputs((2048, hidden), dtype, "cuda")
    check_layer_norm(x, weight, bias if with_bias else None, residual if fused else None, zero_centered,
                     backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_rms_norm_still_matches_after_sharing_the_kernel(backend, poisoned_outputs):
    """The row-norm kernel serves rms_norm too (no centring): a cross-check at a width of the layer_norm cases."""
    x, weight, residual = rms_norm_inputs((9, 6144), torch.bfloat16, "cuda")
    check_rms_norm(x, weight, residual, backend=backend)


# ---- Triton's backward (cuda has none: autograd after a cuda forward runs the torch backward) -------------

def check_backward(grad_y, h, weight, zero_centered_weight, eps=1e-5):
    grads = triton_layer_norm.layer_norm_backward(grad_y, h, weight, eps, zero_centered_weight)
    truth = reference.layer_norm_backward(grad_y.double(), h.double(), weight.double(), eps, zero_centered_weight)
    baseline = reference.layer_norm_backward(grad_y, h, weight, eps, zero_centered_weight)
    for name, got, want, base in zip(("grad_h", "grad_weight", "grad_bias"), grads, truth, baseline):
        assert_close_by_rule(got, want, base, name)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("rows,hidden,rows_per_program", [(10, 769, 3), (7, 1024, 1), (5, 64, 8)])
@pytest.mark.parametrize("zero_centered", [False, True])
def test_triton_backward_matches_reference(dtype, rows, hidden, rows_per_program, zero_centered, monkeypatch,
                                           poisoned_outputs):
    """rows_per_program is forced so programs walk several rows, the last one fewer (10 = 3 + 3 + 3 + 1)."""
    monkeypatch.setattr(configs, "row_norm_backward_rows_per_program", lambda rows, device: rows_per_program)
    h, weight, _, grad_y = layer_norm_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight - 1 if zero_centered else weight, zero_centered)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("rows,hidden", [(4096, 4096), (3000, 6144), (333, 769), (1000, 8192)])
@pytest.mark.parametrize("zero_centered", [False, True])
def test_gpu_triton_backward_matches_reference(dtype, rows, hidden, zero_centered, poisoned_outputs):
    h, weight, _, grad_y = layer_norm_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight, zero_centered)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_autograd_through_triton_gives_reference_gradients(dtype, fused, with_bias):
    x, weight, bias, residual = layer_norm_inputs((2, 3, 769), dtype)
    grad_y, grad_h = torch.randn_like(x), torch.randn_like(x)

    def gradients(backend, cast):
        leaves = [cast(t).detach().requires_grad_(True) for t in (x, weight, bias, residual)]
        out = nk.layer_norm(leaves[0], leaves[1], leaves[2] if with_bias else None, 1e-5,
                            leaves[3] if fused else None, zero_centered_weight=True, backend=backend)
        outputs, grads = ((out[0], out[1]), (grad_y, grad_h)) if fused else ((out,), (grad_y,))
        torch.autograd.backward(outputs, [cast(g) for g in grads])
        return [leaf.grad for leaf in leaves]

    triton_grads = gradients("triton", lambda t: t)
    truth = gradients("torch", lambda t: t.double())
    baseline = gradients("torch", lambda t: t)
    for name, got, want, base in zip(("x", "weight", "bias", "residual"), triton_grads, truth, baseline):
        if base is None:  # no bias / no residual in this call
            assert got is None and want is None, name
        else:
            assert_close_by_rule(got, want, base, f"grad of {name}")


@pytest.mark.parametrize("hidden,expected", [(769, "triton"), (configs.LAYER_NORM_BACKWARD_MAX_HIDDEN + 1, "torch")])
def test_backward_after_a_triton_forward_runs_on_triton_where_the_row_fits(hidden, expected):
    h = torch.randn(3, hidden, device=DEVICE)
    args = (torch.randn_like(h), h, torch.rand(hidden, device=DEVICE), 1e-5, False)
    assert backends.choose_backward("layer_norm_backward", "triton", h.device, args) == expected


def test_triton_refuses_rows_wider_than_its_register_tile_with_the_reason():
    x = torch.randn(1, configs.ROW_NORM_MAX_HIDDEN + 1)
    reason = backends.why_unable("layer_norm", "triton", torch.device("cuda"), (x, x[0], None, 1e-5, None, False))
    assert reason is not None and "hidden size" in reason


@pytest.mark.parametrize("fused", [False, True])
def test_custom_op_contract_holds_on_triton(fused):
    x, weight, bias, residual = (t.requires_grad_(True) for t in layer_norm_inputs((3, 769), torch.float32))
    if fused:
        torch.library.opcheck(torch.ops.neva.fused_add_layer_norm, (x, weight, bias, 1e-5, True, residual, "triton"))
    else:
        torch.library.opcheck(torch.ops.neva.layer_norm, (x, weight, None, 1e-5, False, "triton"))
