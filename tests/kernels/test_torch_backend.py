"""The torch backend's lean decode-path ops (neva_kernels.torch_backend) against the reference, on odd shapes.

Each lean function must be as accurate as the reference by the tolerance rule (tests/helpers.py): its error
against the reference computed in float64 at most twice the reference's own error in the input dtype. Writes
to the KV cache must be exact. The compiled path (torch.compile traces the lean maths) is checked too.
"""
import pytest
import torch

import neva_kernels as nk
from neva_kernels import reference, torch_backend
from tests.helpers import assert_close_by_rule, strided

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def check_like_reference(op: str, *args, **kwargs) -> None:
    """torch_backend.<op>(*args) against reference.<op> in float64 (truth) and in the input dtype (baseline)."""
    as_double = (lambda a: a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a)
    outs = getattr(torch_backend, op)(*args, **kwargs)
    truths = getattr(reference, op)(*map(as_double, args), **kwargs)
    baselines = getattr(reference, op)(*args, **kwargs)
    if isinstance(outs, torch.Tensor):
        outs, truths, baselines = (outs,), (truths,), (baselines,)
    for i, (out, truth, baseline) in enumerate(zip(outs, truths, baselines, strict=True)):
        assert out.dtype == baseline.dtype and out.is_contiguous(), f"{op} output {i}"
        assert_close_by_rule(out, truth, baseline, f"{op} output {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 769), (2, 33)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, shape, with_residual):
    x = strided(torch.randn(shape, dtype=dtype) * 3)
    residual = torch.randn(shape, dtype=dtype) if with_residual else None
    check_like_reference("rms_norm", x, torch.rand(shape[-1], dtype=dtype) + 0.5, 1e-5, residual)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 769)])
@pytest.mark.parametrize("zero_centered_weight", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm(dtype, shape, zero_centered_weight, with_bias, with_residual):
    x = torch.randn(shape, dtype=dtype) * 3 + 2
    weight = torch.rand(shape[-1], dtype=dtype) - (0.5 if zero_centered_weight else -0.5)
    bias = torch.randn(shape[-1], dtype=dtype) if with_bias else None
    residual = torch.randn(shape, dtype=dtype) if with_residual else None
    check_like_reference("layer_norm", x, weight, bias, 1e-5, residual, zero_centered_weight)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,heads,head_dim,rot_dim", [((1,), (4, 2), 16, 16), ((2, 7), (6, 3), 80, 40),
                                                         ((5,), (3, 1), 24, 8)])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_rotary_embedding(dtype, lead, heads, head_dim, rot_dim, interleaved, index_dtype):
    q = torch.randn(*lead, heads[0], head_dim, dtype=dtype)
    k = torch.randn(*lead, heads[1], head_dim, dtype=dtype)
    positions = torch.randint(0, 300, lead, dtype=index_dtype)
    cache = reference.rotary_cos_sin_cache(rot_dim, 300, dtype=torch.float32)
    check_like_reference("rotary_embedding", q, k, positions, cache, interleaved)


def kv_cache(dtype, num_blocks=9, block_size=4, kv_heads=2, head_dim=12):
    return (torch.randn(num_blocks, block_size, kv_heads, head_dim, dtype=dtype),
            torch.randn(num_blocks, block_size, kv_heads, head_dim, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slots", [[5], [0, 35, 17, 3], [-1, 8, -1, 30], [-1, -1]])
def test_append_kv_cache_writes_what_the_reference_writes(dtype, slots):
    lean, ref = kv_cache(dtype), kv_cache(dtype)
    for a, b in zip(lean, ref):
        b.copy_(a)
    k, v = (torch.randn(len(slots), 2, 12, dtype=dtype) for _ in range(2))
    slot_mapping = torch.tensor(slots)
    torch_backend.append_kv_cache(k, v, *lean, slot_mapping)
    reference.append_kv_cache(k, v, *ref, slot_mapping)
    assert all(torch.equal(a, b) for a, b in zip(lean, ref))


def decode_problem(dtype, seq_lens, q_heads=6, block_size=4, width=5):
    """q, caches, tables whose entries past each length are garbage block ids (never read), seq_lens."""
    k_cache, v_cache = kv_cache(dtype, block_size=block_size)
    q = torch.randn(len(seq_lens), q_heads, k_cache.shape[-1], dtype=dtype)
    tables = torch.randint(0, k_cache.shape[0], (len(seq_lens), width), dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    for row, length in enumerate(seq_lens):
        tables[row, -(-length // block_size):] = 10 ** 6  # out of range: reading it would fail
    return q, k_cache, v_cache, tables, lens


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_lens", [[1], [20, 3, 7], [0, 13], [0]])
@pytest.mark.parametrize("q_heads", [2, 6])
def test_paged_decode_attention(dtype, seq_lens, q_heads):
    check_like_reference("paged_decode_attention", *decode_problem(dtype, seq_lens, q_heads), 0.3)


def decode_ops(q, k, v, k_cache, v_cache, slot_mapping, tables, seq_lens, positions, rope):
    """A decode step's ops through the public API on the torch backend (what torch.compile traces)."""
    q, k = nk.rotary_embedding(q, k, positions, rope, backend="torch")
    nk.append_kv_cache(k, v, k_cache, v_cache, slot_mapping, backend="torch")
    out = nk.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, backend="torch")
    return nk.rms_norm(out.flatten(1), torch.ones(out[0].numel()), 1e-6, residual=out.flatten(1), backend="torch")


@pytest.mark.parametrize("slots", [[6, 21, 33], [-1, 21, -1], [-1, -1, -1]])
def test_compiled_decode_ops_equal_eager(slots):
    """torch.compile traces the lean maths (no opaque op, no graph break), padding slots included."""
    q, k_cache, v_cache, tables, lens = decode_problem(torch.float32, [7, 22, 34], width=9)
    caches = (k_cache, v_cache)
    k, v = (torch.randn(3, 2, 12) for _ in range(2))
    args = (torch.tensor(slots), tables, lens, lens.long() - 1, reference.rotary_cos_sin_cache(12, 64))
    eager_caches = tuple(c.clone() for c in caches)
    expected = decode_ops(q, k, v, *eager_caches, *args)
    torch._dynamo.reset()
    got = torch.compile(decode_ops, fullgraph=True, dynamic=False)(q, k, v, *caches, *args)
    torch.testing.assert_close(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(caches, eager_caches))
