"""The triton layer_norm (forward, fused residual, zero-centred weight, backward, autograd) against the reference.

Truth is the reference in float64; the baseline of the tolerance rule is the reference run on the input dtype
(float32 arithmetic, one rounding at the end). On CPU these run under the Triton interpreter (float16/float32);
the gpu tests add bfloat16 and model sizes (1024 CLIP-L, 4096, 6144, 8192).
"""
import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends, reference
from neva_kernels.triton_kernels import layer_norm as triton_layer_norm
from neva_kernels.triton_kernels import memory_bound_configs as configs
from tests.helpers import assert_close_by_rule, strided

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
VARIANTS = [  # (with bias, zero-centred weight)
    (True, False), (False, True), (True, True)]


def make_inputs(shape, dtype, device=DEVICE):
    """x with an offset (the mean matters), a weight around 1 (or 0 when zero-centred), bias, residual."""
    x = torch.randn(shape, dtype=dtype, device=device) * 3 + 1.5
    weight = torch.rand(shape[-1], dtype=dtype, device=device) + 0.5
    bias = torch.randn(shape[-1], dtype=dtype, device=device)
    residual = torch.randn(shape, dtype=dtype, device=device)
    return x, weight, bias, residual


def check_forward(x, weight, bias, residual, zero_centered_weight, eps=1e-5, backend="triton"):
    """`backend`'s layer_norm (fused when residual is given) against the float64 reference, by the rule."""
    if zero_centered_weight:
        weight = weight - 1
    out = nk.layer_norm(x, weight, bias, eps, residual, zero_centered_weight, backend=backend)
    baseline = reference.layer_norm(x, weight, bias, eps, residual, zero_centered_weight)
    as_double = (lambda t: None if t is None else t.double())
    if residual is None:
        truth = reference.layer_norm(x.double(), weight.double(), as_double(bias), eps, None, zero_centered_weight)
        assert_close_by_rule(out, truth, baseline, "layer_norm")
        return
    (y, h), (baseline_y, baseline_h) = out, baseline
    assert torch.equal(h, baseline_h), "fused layer_norm: the updated residual differs from x + residual"
    truth_y = reference.layer_norm(h.double(), weight.double(), as_double(bias), eps, None, zero_centered_weight)
    assert_close_by_rule(y, truth_y, baseline_y, "fused layer_norm")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", [(3, 769), (2, 3, 1024), (1, 64), (4, 1), (2, 6144)])
@pytest.mark.parametrize("with_bias,zero_centered", VARIANTS)
@pytest.mark.parametrize("fused", [False, True])
def test_forward_matches_reference(dtype, shape, with_bias, zero_centered, fused, poisoned_outputs):
    x, weight, bias, residual = make_inputs(shape, dtype)
    check_forward(x, weight, bias if with_bias else None, residual if fused else None, zero_centered)


@pytest.mark.parametrize("fused", [False, True])
def test_forward_reads_strided_rows(fused, poisoned_outputs):
    x, weight, bias, residual = make_inputs((5, 769), torch.float16)
    wide = torch.randn(5, 1000, dtype=torch.float16, device=DEVICE)
    wide[:, :769] = x
    # x: row stride 1000; residual, weight and bias: last-dim stride 2.
    check_forward(wide[:, :769], strided(weight), strided(bias), strided(residual) if fused else None, True)


def test_empty_batch_gives_empty_outputs():
    x, weight, bias, residual = make_inputs((0, 769), torch.float32)
    y, h = nk.layer_norm(x, weight, bias, residual=residual, backend="triton")
    assert y.shape == h.shape == (0, 769)


def check_backward(grad_y, h, weight, zero_centered_weight, eps=1e-5):
    grads = triton_layer_norm.layer_norm_backward(grad_y, h, weight, eps, zero_centered_weight)
    truth = reference.layer_norm_backward(grad_y.double(), h.double(), weight.double(), eps, zero_centered_weight)
    baseline = reference.layer_norm_backward(grad_y, h, weight, eps, zero_centered_weight)
    for name, got, want, base in zip(("grad_h", "grad_weight", "grad_bias"), grads, truth, baseline):
        assert_close_by_rule(got, want, base, name)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("rows,hidden,rows_per_program", [(10, 769, 3), (7, 1024, 1), (5, 64, 8)])
@pytest.mark.parametrize("zero_centered", [False, True])
def test_backward_matches_reference(dtype, rows, hidden, rows_per_program, zero_centered, monkeypatch,
                                    poisoned_outputs):
    """rows_per_program is forced so programs walk several rows, the last one fewer (10 = 3 + 3 + 3 + 1)."""
    monkeypatch.setattr(configs, "row_norm_backward_rows_per_program", lambda rows, device: rows_per_program)
    h, weight, _, grad_y = make_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight - 1 if zero_centered else weight, zero_centered)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_autograd_through_triton_gives_reference_gradients(dtype, fused, with_bias):
    x, weight, bias, residual = make_inputs((2, 3, 769), dtype)
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


def test_rows_wider_than_the_register_tile_are_refused_with_the_reason():
    x = torch.randn(1, configs.ROW_NORM_MAX_HIDDEN + 1)
    reason = backends.why_unable("layer_norm", "triton", torch.device("cuda"), (x, x[0], None, 1e-5, None, False))
    assert reason is not None and "hidden size" in reason


@pytest.mark.parametrize("fused", [False, True])
def test_custom_op_contract_holds_on_triton(fused):
    x, weight, bias, residual = (t.requires_grad_(True) for t in make_inputs((3, 769), torch.float32))
    if fused:
        torch.library.opcheck(torch.ops.neva.fused_add_layer_norm, (x, weight, bias, 1e-5, True, residual, "triton"))
    else:
        torch.library.opcheck(torch.ops.neva.layer_norm, (x, weight, None, 1e-5, False, "triton"))


# ---- on a GPU: bfloat16 and model sizes --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("hidden", [769, 1024, 4096, 6144, 8192, 16384])
@pytest.mark.parametrize("with_bias,zero_centered", VARIANTS)
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_forward_matches_reference(dtype, hidden, with_bias, zero_centered, fused, poisoned_outputs):
    x, weight, bias, residual = make_inputs((2048, hidden), dtype)
    check_forward(x, weight, bias if with_bias else None, residual if fused else None, zero_centered)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("rows,hidden", [(4096, 4096), (3000, 6144), (333, 769), (1000, 8192)])
@pytest.mark.parametrize("zero_centered", [False, True])
def test_gpu_backward_matches_reference(dtype, rows, hidden, zero_centered, poisoned_outputs):
    h, weight, _, grad_y = make_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight, zero_centered)
