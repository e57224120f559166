"""The cuda layer_norm (plain, fused with the residual add, zero-centred weight, with and without bias) against the
reference, on a GPU. Truth is the reference in float64; the baseline of the tolerance rule is the reference on the
input dtype. Hidden 769 puts each row at a different 16-byte offset (unaligned head, vectors, scalar tail, scalar
weight and bias); 1024 / 4096 / 6144 / 8192 are CLIP-L's and Nemotron widths; 70000 is past what a row cached in
registers holds (the streaming variant, which re-reads the row for the variance)."""
import pytest
import torch

import neva_kernels as nk
from tests.helpers import strided
from tests.test_extension import needs_extension
from tests.triton import test_layer_norm as triton_tests

pytestmark = [pytest.mark.gpu, needs_extension]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(shape, dtype):
    return triton_tests.make_inputs(shape, dtype, device="cuda")


def check(x, weight, bias, residual, zero_centered_weight):
    triton_tests.check_forward(x, weight, bias, residual, zero_centered_weight, backend="cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 769), (2, 3, 1024), (5, 4096), (4, 6144), (3, 8192), (4, 1), (5, 8),
                                   (2, 70000)])
@pytest.mark.parametrize("with_bias,zero_centered", triton_tests.VARIANTS)
@pytest.mark.parametrize("fused", [False, True])
def test_matches_reference(dtype, shape, with_bias, zero_centered, fused, poisoned_outputs):
    x, weight, bias, residual = make_inputs(shape, dtype)
    check(x, weight, bias if with_bias else None, residual if fused else None, zero_centered)


@pytest.mark.sanitizer
@pytest.mark.parametrize("fused", [False, True])
def test_small_rows(fused, poisoned_outputs):
    x, weight, bias, residual = make_inputs((7, 37), torch.float16)
    check(x, weight, bias, residual if fused else None, True)


@pytest.mark.parametrize("fused", [False, True])
def test_strided_and_offset_inputs(fused, poisoned_outputs):
    x, weight, bias, residual = make_inputs((5, 769), torch.bfloat16)
    wide = torch.randn(5, 1000, dtype=x.dtype, device="cuda")
    wide[:, :769] = x
    # x rows 2000 bytes apart (not co-aligned with the output: copied); residual, weight and bias strided.
    check(wide[:, :769], strided(weight), strided(bias), strided(residual) if fused else None, False)
    # Rows 16-byte co-aligned with the output but with a gap between them: read in place.
    gap = torch.randn(5, 784, dtype=x.dtype, device="cuda")
    gap[:, :768] = x[:, :768]
    check(gap[:, :768], weight[:768], bias[:768], residual[:, :768] if fused else None, True)
    # Starting 2 bytes past an allocation: an unaligned first row; a bias that starts unaligned too.
    flat = torch.randn(1 + 5 * 769, dtype=x.dtype, device="cuda")
    shifted_bias = torch.randn(770, dtype=x.dtype, device="cuda")[1:]
    check(flat[1:].view(5, 769), weight, shifted_bias, residual if fused else None, True)


def test_empty_batch_and_large_row_count(poisoned_outputs):
    x, weight, bias, residual = make_inputs((0, 769), torch.float16)
    y, h = nk.layer_norm(x, weight, bias, residual=residual, backend="cuda")
    assert y.shape == h.shape == (0, 769)
    x, weight, bias, residual = make_inputs((70000, 64), torch.float16)
    check(x, weight, bias, residual, False)


def test_rms_norm_still_matches_after_sharing_the_kernel(poisoned_outputs):
    """The row-norm template serves rms_norm too (kCenter off): a quick cross-check next to the layer_norm cases."""
    from tests.triton import test_rms_norm
    x, weight, residual = test_rms_norm.make_inputs((9, 6144), torch.bfloat16, device="cuda")
    test_rms_norm.check_forward(x, weight, residual, backend="cuda")
