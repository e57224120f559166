"""The cuda rms_norm (plain and fused with the residual add) against the reference, on a GPU.

Truth is the reference in float64; the baseline of the tolerance rule is the reference on the input dtype. Hidden
769 puts each row at a different 16-byte offset (unaligned head, vectors, scalar tail, unaligned weight vectors);
5120 is a LLaMA width; 70000 is past what a row cached in registers holds (the streaming variant)."""
import pytest
import torch

import neva_kernels as nk
from tests.helpers import strided
from tests.test_extension import needs_extension
from tests.triton import test_rms_norm as triton_tests

pytestmark = [pytest.mark.gpu, needs_extension]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(shape, dtype):
    return triton_tests.make_inputs(shape, dtype, device="cuda")


def check(x, weight, residual, eps=1e-5):
    triton_tests.check_forward(x, weight, residual, eps, backend="cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 769), (2, 3, 5120), (4, 1), (5, 8), (2, 70000)])
@pytest.mark.parametrize("fused", [False, True])
def test_matches_reference(dtype, shape, fused, poisoned_outputs):
    x, weight, residual = make_inputs(shape, dtype)
    check(x, weight, residual if fused else None)


@pytest.mark.sanitizer
@pytest.mark.parametrize("fused", [False, True])
def test_small_rows(fused, poisoned_outputs):
    x, weight, residual = make_inputs((7, 37), torch.float16)
    check(x, weight, residual if fused else None)


@pytest.mark.parametrize("fused", [False, True])
def test_strided_and_offset_inputs(fused, poisoned_outputs):
    x, weight, residual = make_inputs((5, 769), torch.bfloat16)
    wide = torch.randn(5, 1000, dtype=x.dtype, device="cuda")
    wide[:, :769] = x
    # x rows 2000 bytes apart (not co-aligned with the output: copied); residual and weight strided.
    check(wide[:, :769], strided(weight), strided(residual) if fused else None)
    # Rows 16-byte co-aligned with the output but with a gap between them: read in place.
    gap = torch.randn(5, 784, dtype=x.dtype, device="cuda")
    gap[:, :768] = x[:, :768]
    check(gap[:, :768], weight[:768], residual[:, :768] if fused else None)
    # Starting 2 bytes past an allocation: an unaligned first row.
    flat = torch.randn(1 + 5 * 769, dtype=x.dtype, device="cuda")
    check(flat[1:].view(5, 769), weight, residual if fused else None)


def test_empty_batch_and_large_row_count(poisoned_outputs):
    x, weight, residual = make_inputs((0, 769), torch.float16)
    y, h = nk.rms_norm(x, weight, residual=residual, backend="cuda")
    assert y.shape == h.shape == (0, 769)
    x, weight, residual = make_inputs((70000, 64), torch.float16)
    check(x, weight, residual)
