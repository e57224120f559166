"""rotary_embedding on its one kernel backend, triton, against the reference: NeoX and interleaved pairs, partial
rot_dim, q and k with different head counts, several leading dims, strided inputs. Truth: the reference in
float64; baseline: the reference on the input dtype (float32 arithmetic, one rounding)."""
import pytest
import torch

import neva_kernels as nk
from neva_kernels import reference
from tests.helpers import assert_close_by_rule, strided
from tests.kernels.problems import DEVICE


def check(q, k, positions, cache, interleaved):
    q_out, k_out = nk.rotary_embedding(q, k, positions, cache, interleaved, backend="triton")
    truth = reference.rotary_embedding(q.double(), k.double(), positions, cache.double(), interleaved)
    baseline = reference.rotary_embedding(q, k, positions, cache, interleaved)
    rot_dim = cache.shape[1]
    for name, got, want, base, x in zip("qk", (q_out, k_out), truth, baseline, (q, k)):
        assert_close_by_rule(got, want, base, f"rotary {name}")
        assert torch.equal(got[..., rot_dim:], x[..., rot_dim:]), f"{name}: features past rot_dim changed"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rot_dim", [(80, 80), (64, 32), (128, 96), (256, 256)])
def test_matches_reference(dtype, interleaved, head_dim, rot_dim, poisoned_outputs):
    q = torch.randn(2, 7, 5, head_dim, dtype=dtype, device=DEVICE)  # [batch, seq, Hq, D]: Hq not a power of 2
    k = torch.randn(2, 7, 2, head_dim, dtype=dtype, device=DEVICE)
    positions = torch.randint(0, 300, (2, 7), device=DEVICE)
    check(q, k, positions, reference.rotary_cos_sin_cache(rot_dim, 300, device=DEVICE), interleaved)


@pytest.mark.parametrize("positions_dtype", [torch.int32, torch.int64])
def test_strided_inputs_one_leading_dim_and_a_half_precision_cache(positions_dtype, poisoned_outputs):
    q = torch.randn(11, 4, 64, dtype=torch.float16, device=DEVICE)
    k = torch.randn(11, 1, 64, dtype=torch.float16, device=DEVICE)
    positions = torch.randint(0, 50, (11,), dtype=positions_dtype, device=DEVICE)
    cache = reference.rotary_cos_sin_cache(48, 50, dtype=torch.float16, device=DEVICE)
    check(strided(q), k, positions, cache, False)


def test_k_as_a_view_of_q_heads_and_three_leading_dims(poisoned_outputs):
    q = torch.randn(2, 3, 4, 6, 32, device=DEVICE)
    positions = torch.randint(0, 20, (2, 3, 4), device=DEVICE)
    check(q, q[..., :2, :], positions, reference.rotary_cos_sin_cache(32, 20, device=DEVICE), True)


def test_no_tokens():
    q = torch.randn(0, 4, 64, device=DEVICE)
    q_out, k_out = nk.rotary_embedding(q, q, torch.empty(0, dtype=torch.int64, device=DEVICE),
                                       reference.rotary_cos_sin_cache(64, 8, device=DEVICE), backend="triton")
    assert q_out.shape == k_out.shape == (0, 4, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("hq,hkv,head_dim,rot_dim", [(32, 32, 128, 128), (32, 8, 128, 64), (16, 2, 80, 80)])
def test_gpu_prefill_sized(dtype, interleaved, hq, hkv, head_dim, rot_dim, poisoned_outputs):
    q = torch.randn(4, 1024, hq, head_dim, dtype=dtype, device=DEVICE)
    k = torch.randn(4, 1024, hkv, head_dim, dtype=dtype, device=DEVICE)
    positions = torch.randint(0, 4096, (4, 1024), device=DEVICE)
    check(q, k, positions, reference.rotary_cos_sin_cache(rot_dim, 4096, device=DEVICE), interleaved)


def test_custom_op_contract_holds_on_triton():
    q = torch.randn(2, 3, 4, 64, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 3, 1, 64, device=DEVICE, requires_grad=True)
    positions = torch.randint(0, 8, (2, 3), device=DEVICE)
    torch.library.opcheck(torch.ops.neva.rotary_embedding,
                          (q, k, positions, reference.rotary_cos_sin_cache(32, 8, device=DEVICE), False, "triton"))
