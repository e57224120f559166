"""The cuda backend's ops without a GPU: schemas as the contract says, fakes that give shapes and dtypes, the split
heuristic, and clear refusals (CPU tensors, head dims and GQA groups the kernels are not compiled for)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import neva_kernels as nk
from neva_kernels import backends
from neva_kernels.cuda_backend import COMPILED
from tests.test_extension import needs_extension

pytestmark = needs_extension

SCHEMAS = {
    "rms_norm": "neva_cuda::rms_norm(Tensor x, Tensor weight, float eps) -> Tensor",
    "fused_add_rms_norm":
        "neva_cuda::fused_add_rms_norm(Tensor x, Tensor weight, float eps, Tensor residual) -> (Tensor, Tensor)",
    "layer_norm": "neva_cuda::layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps, bool zero_centered_weight) "
                  "-> Tensor",
    "fused_add_layer_norm": "neva_cuda::fused_add_layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps, "
                            "bool zero_centered_weight, Tensor residual) -> (Tensor, Tensor)",
    "paged_decode_attention":
        "neva_cuda::paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor seq_lens, float softmax_scale, int num_splits=0) -> Tensor",
    "decode_num_splits": "neva_cuda::decode_num_splits(int batch, int kv_heads, int max_context, int sm_count) -> int",
    "append_kv_cache": "neva_cuda::append_kv_cache(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
                       "Tensor slot_mapping) -> ()",
    "compiled_shapes": "neva_cuda::compiled_shapes() -> (int[] decode_head_dims, int decode_max_group, "
                       "int[] flash_sm80_head_dims, int[] flash_sm90_head_dims)",
}


def test_schemas_match_the_contract():
    assert {name: str(getattr(torch.ops.neva_cuda, name).default._schema) for name in SCHEMAS} == SCHEMAS


def test_schema_arguments_are_those_of_the_reference_functions():
    """The reference's arguments, then only defaulted ones (which force a kernel path: tests, benchmarks)."""
    import inspect

    from neva_kernels import reference
    for op, reference_fn in (("paged_decode_attention", reference.paged_decode_attention),
                             ("append_kv_cache", reference.append_kv_cache),
                             ("flash_attention", reference.flash_attention),
                             ("project_image_tokens", reference.project_image_tokens)):
        schema = getattr(torch.ops.neva_cuda, op).default._schema
        required = [a.name for a in schema.arguments if not a.has_default_value()]
        assert required == list(inspect.signature(reference_fn).parameters), op
    assert [a.name for a in torch.ops.neva_cuda.fused_add_rms_norm.default._schema.arguments] == \
        list(inspect.signature(nk.reference.rms_norm).parameters)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fakes_give_the_shapes_and_dtypes(dtype):
    with FakeTensorMode() as mode:
        x, weight = (mode.from_tensor(torch.empty(s, dtype=dtype)) for s in ((3, 5, 769), (769,)))
        y = torch.ops.neva_cuda.rms_norm(x, weight, 1e-6)
        y2, h = torch.ops.neva_cuda.fused_add_rms_norm(x, weight, 1e-6, x)
        assert all(t.shape == x.shape and t.dtype == dtype for t in (y, y2, h))

        q = mode.from_tensor(torch.empty(4, 8, 128, dtype=dtype))
        cache = mode.from_tensor(torch.empty(10, 16, 2, 128, dtype=dtype))
        tables = mode.from_tensor(torch.zeros(4, 3, dtype=torch.int32))
        lens = mode.from_tensor(torch.zeros(4, dtype=torch.int32))
        out = torch.ops.neva_cuda.paged_decode_attention(q, cache, cache, tables, lens, 0.1)
        split_out = torch.ops.neva_cuda.paged_decode_attention(q, cache, cache, tables, lens, 0.1, num_splits=3)
        assert all(t.shape == q.shape and t.dtype == dtype for t in (out, split_out))

        k = mode.from_tensor(torch.empty(5, 2, 128, dtype=dtype))
        slots = mode.from_tensor(torch.zeros(5, dtype=torch.int64))
        assert torch.ops.neva_cuda.append_kv_cache(k, k, cache, cache, slots) is None


def test_kernels_refuse_cpu_tensors():
    x = torch.randn(2, 64)
    with pytest.raises(NotImplementedError):
        torch.ops.neva_cuda.rms_norm(x, torch.ones(64), 1e-6)


@pytest.mark.parametrize("call", ["rms_norm", "fused_add_rms_norm", "paged_decode_attention", "append_kv_cache"])
def test_public_ops_on_cpu_with_backend_cuda_name_the_device(call):
    x, weight = torch.randn(3, 64), torch.rand(64)
    q, cache = torch.randn(2, 4, 64), torch.randn(6, 16, 2, 64)
    tables, lens = torch.zeros(2, 2, dtype=torch.int32), torch.tensor([3, 0], dtype=torch.int32)
    calls = {
        "rms_norm": lambda: nk.rms_norm(x, weight, backend="cuda"),
        "fused_add_rms_norm": lambda: nk.rms_norm(x, weight, residual=x, backend="cuda"),
        "paged_decode_attention": lambda: nk.paged_decode_attention(q, cache, cache, tables, lens, backend="cuda"),
        "append_kv_cache": lambda: nk.append_kv_cache(q[:, :2], q[:, :2], cache, cache,
                                                      torch.tensor([0, -1]), backend="cuda"),
    }
    with pytest.raises(nk.BackendUnavailableError, match="cpu"):
        calls[call]()


def test_decode_split_heuristic():
    splits = torch.ops.neva_cuda.decode_num_splits
    sms = 132
    long_single = splits(1, 32, 65536, sms)
    assert long_single > 1 and 32 * long_single >= sms, "batch 1 x 32 KV heads at 64k must fill the SMs"
    assert splits(64, 32, 1024, sms) == 1  # 2048 blocks already fill the GPU
    assert splits(1, 32, 64, sms) == 1  # too short to split
    assert splits(1, 1, 10 ** 6, sms) <= 64  # capped
    assert splits(0, 8, 4096, sms) >= 1
    with pytest.raises(RuntimeError, match="decode_num_splits"):
        splits(1, 0, 100, sms)


def test_calls_outside_the_decode_kernels_are_refused_with_the_reason():
    def reason(q_heads, kv_heads, head_dim):
        q, cache = torch.empty(1, q_heads, head_dim), torch.empty(2, 16, kv_heads, head_dim)
        args = (q, cache, cache, torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32), 1.0)
        return backends.why_unable("paged_decode_attention", "cuda", torch.device("cuda"), args)
    head_dims, max_group = COMPILED.decode_head_dims, COMPILED.decode_max_group
    for head_dim in head_dims:
        assert reason(2 * max_group, 2, head_dim) is None
        assert reason(2, 2, head_dim) is None
    missing = next(d for d in range(8, 513, 8) if d not in head_dims)
    assert reason(4, 4, missing) == \
        f"the cuda paged decode is compiled for head_dim {', '.join(map(str, head_dims))}, got {missing}"
    assert reason(2 * max_group + 2, 1, head_dims[0]) == \
        f"the cuda paged decode serves at most {max_group} query heads per KV head, got {2 * max_group + 2}"


def test_a_misaligned_cache_is_refused_by_the_support_check():
    q, cache = torch.empty(1, 4, 64, dtype=torch.float16), torch.empty(2 * 16 * 2 * 64 + 1, dtype=torch.float16)
    shifted = cache[1:].view(2, 16, 2, 64)
    args = (q, shifted, shifted, torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32), 1.0)
    assert backends.why_unable("paged_decode_attention", "cuda", torch.device("cuda"), args) == \
        "the cuda paged decode copies pages in 16-byte units: 'k_cache' must start 16-byte aligned"


def test_the_compiled_shapes_come_from_the_extension():
    decode, group, flash, flash_sm90 = torch.ops.neva_cuda.compiled_shapes()
    assert COMPILED == (tuple(decode), group, tuple(flash), tuple(flash_sm90))
    # The sm80 kernel is the sm90 kernel's fallback, so it has every head dim the sm90 kernel has.
    assert decode and flash and group >= 1 and set(flash_sm90) <= set(flash)
