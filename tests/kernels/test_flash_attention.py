"""flash_attention's forward on each kernel path against the float64 reference, by the tolerance rule
(tests/kernels/problems.check_flash_outputs: out and lse; the baseline is PyTorch's SDPA in the input dtype).

The paths: triton through the public op (on CPU in the Triton interpreter, float16/float32, small shapes), and cuda
through its kernel op, each kernel forced: "cuda-sm80" (mma.sync, also on Hopper), "cuda-sm90" (wgmma + TMA;
skipped off compute capability 9.0 and for head dims it lacks) and "cuda-auto" (picked per device). Outputs are
poisoned (NaN) before a kernel runs. Triton's backward is tests/kernels/test_flash_attention_backward.py.
"""
import inspect
import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import neva_kernels as nk
from neva_kernels import cuda_backend, reference
from tests.helpers import BACKEND_MARKS, strided
from tests.kernels.problems import (DEVICE, FLASH_PADDED_SHAPES, FLASH_VARLEN_LENGTHS, INTERPRETER_DTYPES,
                                    TENSOR_CORE_DTYPES, check_flash_forward, check_flash_outputs, device_for,
                                    flash_packed_inputs, flash_padded_inputs)
from tests.test_extension import needs_extension

CUDA_KERNELS = {"cuda-sm80": 80, "cuda-sm90": 90, "cuda-auto": 0}


def on_path(path, *values, marks=()):
    """A case (path, *values) with the marks of the path's backend."""
    return pytest.param(path, *values, marks=[*BACKEND_MARKS[path.split("-")[0]], *marks], id=None)


def forward(path, q, k, v, causal, cu_q=None, cu_k=None, scale=None):
    """(out, lse) of `path`, checked against the reference."""
    scale = scale or 1 / math.sqrt(q.shape[-1])
    if path == "triton":
        out, lse = nk.flash_attention(q, k, v, causal, scale, cu_q, cu_k, return_lse=True, backend="triton")
    else:
        kernel = CUDA_KERNELS[path]
        if kernel == 90 and (torch.cuda.get_device_capability() != (9, 0)
                             or q.shape[-1] not in cuda_backend.COMPILED.flash_sm90_head_dims):
            pytest.skip("the sm90 kernel runs on compute capability 9.0 for head dims "
                        f"{cuda_backend.COMPILED.flash_sm90_head_dims}")
        out, lse = torch.ops.neva_cuda.flash_attention(q, k, v, causal, scale, cu_q, cu_k, None, None, kernel)
    check_flash_outputs(out, lse, q, k, v, causal, cu_q, cu_k, scale)
    return out, lse


# The compute-bound GPU shapes (batch, seqlen_q, seqlen_k, q heads, kv heads, head dim): GQA 1, 4, 4, 4.
GPU_SHAPES = [(2, 1024, 1024, 16, 16, 64), (1, 2048, 2048, 32, 8, 128), (2, 513, 1537, 8, 2, 80),
              (1, 1000, 1000, 4, 1, 256)]
# cuda's small shapes: Sq < Sk, Sq > Sk (causal rows that see no key), lengths no tile divides, every head dim,
# GQA 8, one token.
CUDA_SMALL_SHAPES = [(2, 37, 53, 2, 2, 64), (1, 70, 40, 4, 1, 80), (2, 65, 65, 4, 1, 128), (1, 33, 45, 2, 1, 96),
                     (1, 33, 45, 2, 1, 256), (1, 130, 130, 8, 1, 64), (3, 1, 1, 4, 4, 128)]
SMALL_CASES = [*(on_path("triton", dtype, *shape) for dtype, shape in
                 itertools.product(INTERPRETER_DTYPES, FLASH_PADDED_SHAPES)),
               *(on_path(path, torch.float16, *shape, marks=[pytest.mark.sanitizer]) for path, shape in
                 itertools.product(CUDA_KERNELS, CUDA_SMALL_SHAPES))]
ALL_PATHS = ["triton", *CUDA_KERNELS]


@pytest.mark.parametrize("path,dtype,batch,sq,sk,hq,hkv,d", SMALL_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_small_padded_shapes(path, dtype, batch, sq, sk, hq, hkv, d, causal, poisoned_outputs):
    forward(path, *flash_padded_inputs(batch, sq, sk, hq, hkv, d, dtype, device_for(path.split("-")[0])), causal)


SMALL_PACKED_CASES = [
    *(on_path("triton", dtype, *FLASH_VARLEN_LENGTHS[0], 2, 1) for dtype in INTERPRETER_DTYPES),
    *(on_path(path, torch.bfloat16, (1, 17, 130, 0), (1, 130, 17, 0), 4, 2, marks=[pytest.mark.sanitizer])
      for path in CUDA_KERNELS)]


@pytest.mark.parametrize("path,dtype,lengths_q,lengths_k,hq,hkv", SMALL_PACKED_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_small_packed_batch(path, dtype, lengths_q, lengths_k, hq, hkv, causal, poisoned_outputs):
    problem = flash_packed_inputs(lengths_q, lengths_k, hq, hkv, 64, dtype, device_for(path.split("-")[0]))
    forward(path, *problem[:3], causal, *problem[3:])


@pytest.mark.gpu
@pytest.mark.parametrize("path", [on_path(path) for path in ALL_PATHS])
@pytest.mark.parametrize("dtype", TENSOR_CORE_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch,sq,sk,hq,hkv,d", GPU_SHAPES)
def test_gpu_padded_matches_reference(path, dtype, causal, batch, sq, sk, hq, hkv, d, poisoned_outputs):
    forward(path, *flash_padded_inputs(batch, sq, sk, hq, hkv, d, dtype, "cuda"), causal)


@pytest.mark.gpu
@pytest.mark.parametrize("path", [on_path(path) for path in ALL_PATHS])
@pytest.mark.parametrize("dtype", TENSOR_CORE_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_packed_varlen_matches_reference(path, dtype, causal, poisoned_outputs):
    lengths = ((1, 17, 300, 2048, 0, 777), (1, 300, 17, 2048, 5, 777))
    q, k, v, cu_q, cu_k = flash_packed_inputs(*lengths, 32, 8, 128, dtype, device="cuda")
    forward(path, q, k, v, causal, cu_q, cu_k)


@pytest.mark.parametrize("backend,dtype,causal", [on_path("triton", torch.float16, False),
                                                  on_path("cuda", torch.bfloat16, True)])
def test_public_op_with_strided_inputs_and_custom_scale(backend, dtype, causal, poisoned_outputs):
    device = device_for(backend)
    q = strided(torch.randn(2, 29, 4, 64, dtype=dtype, device=device))
    k = torch.randn(2, 4, 31, 64, dtype=dtype, device=device).transpose(1, 2)  # [B, S, H, D], strided
    v = strided(torch.randn(2, 31, 4, 64, dtype=dtype, device=device))
    check_flash_forward(q, k, v, causal=causal, scale=0.3, backend=backend)


# ---- triton only ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [40, 96, 256])
def test_triton_head_dims_padded_to_the_tile(d, poisoned_outputs):
    """Head dims that are not a power of two run masked in the next tile; 256 is the largest."""
    check_flash_forward(*flash_padded_inputs(1, 33, 45, 2, 1, d, torch.float16), causal=True)


def test_triton_unsupported_calls_say_why():
    q = torch.randn(1, 4, 2, 64, dtype=torch.float64, device=DEVICE)
    with pytest.raises(nk.BackendUnavailableError, match="float64"):
        nk.flash_attention(q, q, q, backend="triton")


# ---- cuda only -----------------------------------------------------------------------------------------

CUDA_PATHS = [on_path(path) for path in CUDA_KERNELS]


@pytest.mark.parametrize("path", CUDA_PATHS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_cuda_packed_keys_and_values_outside_a_sequence_never_reach_it(path, causal, d, poisoned_outputs):
    # Sequences with queries alternate with query-less ones whose K/V rows are all NaN, so the rows right after
    # each sequence's end (read by its last, partial K/V tile) are NaN, and k / v are views of buffers whose rows
    # past cu_seqlens_k[-1] are NaN as well. P is 0 there, but 0 x NaN is NaN: no output may see them.
    lengths_q, lengths_k = (37, 0, 200, 0, 65, 0), (45, 7, 129, 128, 300, 50)
    q, k, v, cu_q, cu_k = flash_packed_inputs(lengths_q, lengths_k, 4, 2, d, torch.bfloat16, device="cuda")
    bounds = cu_k.tolist()
    for i, length_q in enumerate(lengths_q):
        if length_q == 0:
            k[bounds[i]:bounds[i + 1]] = v[bounds[i]:bounds[i + 1]] = math.nan
    k, v = (torch.cat([t, torch.full_like(t[:130], math.nan)])[:len(t)] for t in (k, v))
    out, _ = forward(path, q, k, v, causal, cu_q, cu_k)
    assert bool(out.isfinite().all())


@pytest.mark.parametrize("path", CUDA_PATHS)
def test_cuda_inputs_starting_off_16_bytes_are_copied(path, poisoned_outputs):
    # Contiguous views one element into their storage: .contiguous() keeps them, the 16-byte copies would fault.
    def shifted(t):
        return torch.cat([t.new_zeros(1), t.flatten()])[1:].view(t.shape)
    q, k, v = (shifted(t) for t in flash_padded_inputs(2, 70, 90, 4, 2, 64, torch.float16, "cuda"))
    assert all(t.is_contiguous() and t.data_ptr() % 16 != 0 for t in (q, k, v))
    forward(path, q, k, v, True)


@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("cu_q,cu_k,max_seqlen_q,message", [
    ([0, 3, 9], [0, 4, 9], None, r"'cu_seqlens_k' must start at 0 and end at the token count 10, got 0 \.\. 9"),
    ([0, 3, 8], [0, 4, 10], None, r"'cu_seqlens_q' must start at 0 and end at the token count 9, got 0 \.\. 8"),
    ([0, 5, 3, 9], [0, 4, 6, 10], None, r"'cu_seqlens_q' must never decrease, got 5 then 3 at 1"),
    ([0, 3, 9], [0, 4, 10], 5, r"'max_seqlen_q' must be in 6\.\.9 \(the longest query sequence"),
])
def test_cuda_packed_offsets_and_max_seqlen_q_are_checked_by_the_kernel_op(cu_q, cu_k, max_seqlen_q, message):
    # The op itself checks what the kernels rely on: the Python value checks can be off, or not in the call path.
    q = torch.randn(9, 2, 64, dtype=torch.float16, device="cuda")
    k = torch.randn(10, 2, 64, dtype=torch.float16, device="cuda")
    cu_q, cu_k = (torch.tensor(c, dtype=torch.int32, device="cuda") for c in (cu_q, cu_k))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.neva_cuda.flash_attention(q, k, k, False, 0.125, cu_q, cu_k, max_seqlen_q, None)


@pytest.mark.gpu
@needs_extension
def test_cuda_no_keys_gives_zeros_and_minus_infinity(poisoned_outputs):
    q, k, v = flash_padded_inputs(2, 5, 0, 4, 2, 128, torch.float16, "cuda")
    out, lse = nk.flash_attention(q, k, v, return_lse=True, backend="cuda")
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == -math.inf).all())
    q, k, v, cu_q, cu_k = flash_packed_inputs((0, 0), (0, 0), 4, 2, 128, torch.float16, device="cuda")
    out, lse = nk.flash_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=True, backend="cuda")
    assert out.shape == (0, 4, 128) and lse.shape == (4, 0)


@pytest.mark.gpu
@needs_extension
def test_cuda_sm90_forced_off_hopper_or_for_other_head_dims_says_why():
    q, k, v = flash_padded_inputs(1, 8, 8, 2, 2, 80, torch.float16, "cuda")
    with pytest.raises(RuntimeError, match="no sm90 cuda kernel for head_dim 80"):
        torch.ops.neva_cuda.flash_attention(q, k, v, False, 0.1, None, None, None, None, kernel=90)


@pytest.mark.gpu
@needs_extension
def test_cuda_opcheck(poisoned_outputs):
    q, k, v = flash_padded_inputs(1, 40, 40, 4, 2, 64, torch.bfloat16, "cuda")
    torch.library.opcheck(torch.ops.neva_cuda.flash_attention.default, (q, k, v, True, 0.125, None, None, None, None))
    q, k, v, cu_q, cu_k = flash_packed_inputs((3, 40), (5, 40), 4, 2, 64, torch.bfloat16, device="cuda")
    torch.library.opcheck(torch.ops.neva_cuda.flash_attention.default, (q, k, v, False, 0.125, cu_q, cu_k, 40, 40))


@needs_extension
def test_cuda_schema_takes_the_reference_arguments():
    schema = torch.ops.neva_cuda.flash_attention.default._schema
    assert [a.name for a in schema.arguments] == list(inspect.signature(reference.flash_attention).parameters) + \
        ["kernel"]
    assert schema.arguments[-1].default_value == 0  # 0: the kernel is picked per device


@needs_extension
@pytest.mark.parametrize("dtype", TENSOR_CORE_DTYPES)
def test_cuda_fakes_give_the_shapes_and_dtypes(dtype):
    with FakeTensorMode() as mode:
        q = mode.from_tensor(torch.empty(2, 7, 8, 64, dtype=dtype))
        k = mode.from_tensor(torch.empty(2, 9, 2, 64, dtype=dtype))
        out, lse = torch.ops.neva_cuda.flash_attention(q, k, k, True, 0.1, None, None, None, None)
        assert (out.shape, out.dtype, lse.shape, lse.dtype) == (q.shape, dtype, (2, 8, 7), torch.float32)
        q, k = (mode.from_tensor(torch.empty(n, h, 128, dtype=dtype)) for n, h in ((11, 4), (13, 1)))
        cu = mode.from_tensor(torch.tensor([0, 11], dtype=torch.int32))
        out, lse = torch.ops.neva_cuda.flash_attention(q, k, k, False, 0.1, cu, cu, 11, 13, kernel=80)
        assert (out.shape, lse.shape) == (q.shape, (4, 11))


def test_cuda_generated_instances_are_current():
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "generate_flash_attention_instances.py")
    result = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, f"run `python scripts/generate_flash_attention_instances.py`:\n{result.stdout}"


@pytest.mark.parametrize("dtype,d,reason", [(torch.float32, 64, "float16 or bfloat16"),
                                            (torch.float16, 40, "compiled for head_dim")])
def test_cuda_unsupported_calls_say_why(dtype, d, reason):
    q = torch.empty(1, 4, 2, d, dtype=dtype)
    assert reason in cuda_backend._flash_attention_supports(q, q, q)
