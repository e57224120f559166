"""The triton rms_norm (forward, fused residual, backward, autograd) against the reference.

Truth is the reference in float64; the baseline of the tolerance rule is the reference run on the input dtype
(float32 arithmetic, one rounding at the end), so the kernels may be at most twice as far off as that, plus the
floor. On CPU these run under the Triton interpreter (float16/float32); the gpu tests add bfloat16 and real sizes.
"""
import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends, reference
from neva_kernels.triton_kernels import memory_bound_configs as configs
from neva_kernels.triton_kernels import rms_norm as triton_rms_norm
from tests.helpers import assert_close_by_rule, strided

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(shape, dtype, device=DEVICE):
    x = torch.randn(shape, dtype=dtype, device=device) * 3
    weight = torch.rand(shape[-1], dtype=dtype, device=device) + 0.5
    residual = torch.randn(shape, dtype=dtype, device=device)
    return x, weight, residual


def check_forward(x, weight, residual, eps=1e-5, backend="triton"):
    """`backend`'s rms_norm (fused when residual is given) against the float64 reference, by the rule."""
    out = nk.rms_norm(x, weight, eps, residual=residual, backend=backend)
    baseline = reference.rms_norm(x, weight, eps, residual)
    if residual is None:
        assert_close_by_rule(out, reference.rms_norm(x.double(), weight.double(), eps), baseline, "rms_norm")
        return
    (y, h), (baseline_y, baseline_h) = out, baseline
    # The updated residual is x + residual rounded once to the input dtype: exactly PyTorch's own add.
    assert torch.equal(h, baseline_h), "fused rms_norm: the updated residual differs from x + residual"
    truth_y = reference.rms_norm(h.double(), weight.double(), eps)  # the rounded sum, normalized exactly
    assert_close_by_rule(y, truth_y, baseline_y, "fused rms_norm")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", [(3, 769), (2, 3, 5120), (1, 64), (4, 1)])
@pytest.mark.parametrize("fused", [False, True])
def test_forward_matches_reference(dtype, shape, fused, poisoned_outputs):
    x, weight, residual = make_inputs(shape, dtype)
    check_forward(x, weight, residual if fused else None)


@pytest.mark.parametrize("fused", [False, True])
def test_forward_reads_strided_rows(fused, poisoned_outputs):
    x, weight, residual = make_inputs((5, 769), torch.float16)
    wide = torch.randn(5, 1000, dtype=torch.float16, device=DEVICE)
    wide[:, :769] = x
    # x: row stride 1000; residual and weight: last-dim stride 2.
    check_forward(wide[:, :769], strided(weight), strided(residual) if fused else None)


def test_empty_batch_gives_empty_outputs():
    x, weight, residual = make_inputs((0, 769), torch.float32)
    y, h = nk.rms_norm(x, weight, residual=residual, backend="triton")
    assert y.shape == h.shape == (0, 769)


def check_backward(grad_y, h, weight, eps=1e-6):
    grad_h, grad_weight = triton_rms_norm.rms_norm_backward(grad_y, h, weight, eps)
    truth = reference.rms_norm_backward(grad_y.double(), h.double(), weight.double(), eps)
    baseline = reference.rms_norm_backward(grad_y, h, weight, eps)
    assert_close_by_rule(grad_h, truth[0], baseline[0], "grad_h")
    assert_close_by_rule(grad_weight, truth[1], baseline[1], "grad_weight")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("rows,hidden,rows_per_program", [(10, 769, 3), (7, 5120, 1), (5, 64, 8)])
def test_backward_matches_reference(dtype, rows, hidden, rows_per_program, monkeypatch, poisoned_outputs):
    """rows_per_program is forced so programs walk several rows, the last one fewer (10 = 3 + 3 + 3 + 1)."""
    monkeypatch.setattr(configs, "row_norm_backward_rows_per_program", lambda rows, device: rows_per_program)
    h, weight, grad_y = make_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("fused", [False, True])
def test_autograd_through_triton_gives_reference_gradients(dtype, fused):
    x, weight, residual = make_inputs((2, 3, 769), dtype)
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


def test_rows_wider_than_the_register_tile_are_refused_with_the_reason():
    x = torch.randn(1, configs.ROW_NORM_MAX_HIDDEN + 1)
    reason = backends.why_unable("rms_norm", "triton", torch.device("cuda"), (x, x[0], 1e-6))
    assert reason is not None and "hidden size" in reason


# ---- on a GPU: bfloat16 and model sizes --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("hidden", [769, 4096, 5120, 8192, 16384])
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_forward_matches_reference(dtype, hidden, fused, poisoned_outputs):
    x, weight, residual = make_inputs((2048, hidden), dtype)
    check_forward(x, weight, residual if fused else None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("rows,hidden", [(4096, 4096), (3000, 5120), (333, 769)])
def test_gpu_backward_matches_reference(dtype, rows, hidden, poisoned_outputs):
    h, weight, grad_y = make_inputs((rows, hidden), dtype)
    check_backward(grad_y, h, weight)


@pytest.mark.parametrize("fused", [False, True])
def test_custom_op_contract_holds_on_triton(fused):
    x, weight, residual = (t.requires_grad_(True) for t in make_inputs((3, 769), torch.float32))
    if fused:
        torch.library.opcheck(torch.ops.neva.fused_add_rms_norm, (x, weight, 1e-6, residual, "triton"))
    else:
        torch.library.opcheck(torch.ops.neva.rms_norm, (x, weight, 1e-6, "triton"))
