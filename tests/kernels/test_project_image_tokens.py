"""project_image_tokens (two GEMMs, the second scattering into the image-token rows) on each kernel backend against
the float64 reference, by the tolerance rule (tests/kernels/problems.check_projected). Rows that are not image
tokens must come back bit for bit unchanged; outputs are poisoned.

On cuda every compiled GEMM kernel runs too (the mma.sync one, and the wgmma + TMA one on Hopper), forced through
the kernel op. Shapes: odd dims (padded operands, scalar tails of the row stores), dims that cross tile edges in M,
N and K and run the pipeline through more K tiles than it has stages, and LLaVA-1.5-7B's.
"""
import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import neva_kernels as nk
from neva_kernels import backends
from neva_kernels.architecture import is_hopper
from neva_kernels.triton_kernels import project_image_tokens as project_image_tokens_kernels
from tests.helpers import BACKENDS, on_backend, strided
from tests.kernels.problems import (INTERPRETER_DTYPES, TENSOR_CORE_DTYPES, check_projected, check_projection,
                                    device_for, projector_inputs)
from tests.test_extension import needs_extension


def cuda_kernels_here() -> list[int]:
    """The GEMM kernels this GPU runs: mma.sync everywhere, wgmma + TMA on Hopper when built for sm_90a."""
    hopper = is_hopper(torch.device("cuda")) and "sm_90a" in nk.cuda_backend.build_info()
    return [80, 90] if hopper else [80]


def check_every_path(backend, *inputs):
    """The public op on `backend`; on cuda also each compiled GEMM kernel, forced."""
    check_projection(*inputs, backend=backend)
    if backend == "cuda":
        features, w1, b1, w2, b2, embeds, mask = inputs
        for kernel in cuda_kernels_here():
            out = embeds.clone()
            torch.ops.neva_cuda.project_image_tokens(features, w1, b1, w2, b2, out, mask, kernel)
            check_projected(out, *inputs)


# Triton in the interpreter's dtypes, cuda in the tensor cores' (float32 is refused by its support check).
DTYPE_CASES = [*(on_backend("triton", dtype) for dtype in INTERPRETER_DTYPES),
               *(on_backend("cuda", dtype) for dtype in TENSOR_CORE_DTYPES)]
ON_GPU = [on_backend(backend, dtype) for backend, dtype in itertools.product(("triton", "cuda"), TENSOR_CORE_DTYPES)]


@pytest.mark.parametrize("backend,dtype", DTYPE_CASES)
@pytest.mark.parametrize("images", [1, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_projection_matches_reference(backend, dtype, images, bias, poisoned_outputs):
    """vision 33 and hidden 70 are padded to whole 16-byte chunks; text 65 stores row tails element by element."""
    check_every_path(backend, *projector_inputs(images, tokens=7, vision=33, hidden=70, text=65, seq=24, dtype=dtype,
                                                bias=bias, device=device_for(backend)))


@pytest.mark.parametrize("backend,dtype", [on_backend("triton", torch.float16),
                                           *(on_backend("cuda", dtype) for dtype in TENSOR_CORE_DTYPES)])
def test_flat_layouts_and_non_contiguous_operands(backend, dtype, poisoned_outputs):
    device = device_for(backend)
    features, w1, b1, w2, b2, embeds, mask = projector_inputs(3, 5, 40, 48, 72, 20, dtype, device=device)
    wide = torch.randn(15, 41, dtype=dtype, device=device)[:, 1:]  # rows 82 bytes apart, 2 bytes off
    wide.copy_(features.reshape(15, 40))
    for flat_features in (features.reshape(15, 40), wide):
        check_every_path(backend, flat_features, strided(w1), b1, w2.t().contiguous().t(), strided(b2),
                         embeds.reshape(-1, 72), mask.reshape(-1))


@pytest.mark.parametrize("backend,dtype", [on_backend("triton", torch.float32), on_backend("cuda", torch.float16)])
def test_no_images_leaves_embeddings_alone(backend, dtype):
    device = device_for(backend)
    features, w1, b1, w2, b2, embeds, _ = projector_inputs(1, 4, 16, 32, 24, 8, dtype, device=device)
    out = embeds.clone()
    nk.project_image_tokens(features[:0], w1, b1, w2, b2, out,
                            torch.zeros(out.shape[:-1], dtype=torch.bool, device=device), backend=backend)
    assert torch.equal(out, embeds)


@pytest.mark.sanitizer
@pytest.mark.parametrize("backend,dtype", [on_backend("triton", torch.float16), on_backend("cuda", torch.bfloat16)])
def test_small_projection(backend, dtype, poisoned_outputs):
    check_every_path(backend, *projector_inputs(2, 9, 24, 40, 36, 16, dtype, device=device_for(backend)))


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype", ON_GPU)
@pytest.mark.parametrize("dims", [(40, 72, 56), (1000, 264, 136), (200, 1032, 68), (520, 96, 4104)])
def test_tile_edges_and_long_k(backend, dtype, dims, poisoned_outputs):
    """K of 16 tiles (more than the pipeline's stages) with a partial last tile; M, N past a tile's edge; text 68
    puts every other output row 8 bytes off a 16-byte boundary."""
    vision, hidden, text = dims
    check_every_path(backend, *projector_inputs(3, 67, vision, hidden, text, seq=150, dtype=dtype, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype", ON_GPU)
@pytest.mark.parametrize("images", [1, 3])
def test_llava_shapes(backend, dtype, images, poisoned_outputs):
    """LLaVA-1.5-7B: 576 tokens per image, CLIP-L 1024 -> 4096 -> 4096."""
    check_every_path(backend, *projector_inputs(images, 576, 1024, 4096, 4096, 2048, dtype, device="cuda"))


# ---- triton only ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("images", [1, 3])
def test_triton_tma_descriptor_path_matches_reference(images, monkeypatch, poisoned_outputs):
    """The sm90 path (tiles loaded through tensor descriptors), forced here; its dims keep rows 16-byte aligned."""
    monkeypatch.setattr(project_image_tokens_kernels, "use_tma", lambda *operands: True)
    check_projection(*projector_inputs(images, tokens=7, vision=40, hidden=72, text=56, seq=24, dtype=torch.float16),
                     backend="triton")


# ---- cuda only: the kernel op's schema, fakes and refusals -----------------------------------------------

OP_ARGS = "(Tensor image_features, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor(a!) inputs_embeds, " \
          "Tensor image_token_mask"


@needs_extension
def test_cuda_schema():
    assert str(torch.ops.neva_cuda.project_image_tokens.default._schema) == \
        f"neva_cuda::project_image_tokens{OP_ARGS}, int kernel=0) -> ()"


@needs_extension
def test_cuda_fakes_write_in_place():
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(t) for t in projector_inputs(2, 5, 32, 48, 64, 16, torch.bfloat16, device="cpu")]
        assert torch.ops.neva_cuda.project_image_tokens(*args) is None
        assert torch.ops.neva_cuda.project_image_tokens(*args, 80) is None


@needs_extension
def test_cuda_refuses_float32_and_cpu_calls_with_the_reason():
    args = projector_inputs(1, 4, 16, 32, 24, 8, torch.float32, device="cpu")
    assert "float16 or bfloat16" in backends.why_unable("project_image_tokens", "cuda", torch.device("cuda"), args)
    half = tuple(None if t is None else t.half() if t.is_floating_point() else t for t in args)
    assert backends.why_unable("project_image_tokens", "cuda", torch.device("cuda"), half) is None
    with pytest.raises(nk.BackendUnavailableError, match="cpu"):
        nk.project_image_tokens(*half, backend="cuda")


@pytest.mark.gpu
@needs_extension
def test_cuda_forcing_a_kernel_this_gpu_cannot_run_is_an_error():
    inputs = projector_inputs(1, 4, 16, 32, 24, 8, torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="'kernel' must be"):
        torch.ops.neva_cuda.project_image_tokens(*inputs, 75)
    if 90 not in cuda_kernels_here():
        with pytest.raises(RuntimeError, match="wgmma"):
            torch.ops.neva_cuda.project_image_tokens(*inputs, 90)
