"""The cuda image-token projector (two tensor-core GEMMs, the second scattering into the image-token rows).

Without a GPU: the schemas, fakes and refusals. On a GPU: every compiled GEMM kernel (the mma.sync one, and the
wgmma + TMA one on Hopper) against the float64 reference by the tolerance rule, on the Triton tests' shapes
(odd dims: padded operands, scalar tails of the row stores) and on shapes that cross tile edges in M, N and K
and run the pipeline through more K tiles than it has stages. Rows that are not image tokens must come back
unchanged; every other output element is checked against the truth (outputs are poisoned)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import neva_kernels as nk
from neva_kernels import backends
from neva_kernels.architecture import is_hopper
from tests.helpers import strided
from tests.test_extension import needs_extension
from tests.triton.test_flash_attention import GPU_DTYPES
from tests.triton.test_project_image_tokens import check_projection, check_written, make_inputs

pytestmark = needs_extension

OP_ARGS = "(Tensor image_features, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor(a!) inputs_embeds, " \
          "Tensor image_token_mask"


def test_schemas():
    assert str(torch.ops.neva_cuda.project_image_tokens.default._schema) == \
        f"neva_cuda::project_image_tokens{OP_ARGS}, int kernel=0) -> ()"


def test_fakes_write_in_place():
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(t) for t in make_inputs(2, 5, 32, 48, 64, 16, torch.bfloat16, device="cpu")]
        assert torch.ops.neva_cuda.project_image_tokens(*args) is None
        assert torch.ops.neva_cuda.project_image_tokens(*args, 80) is None


def test_float32_and_cpu_calls_are_refused_with_the_reason():
    args = make_inputs(1, 4, 16, 32, 24, 8, torch.float32, device="cpu")
    assert "float16 or bfloat16" in backends.why_unable("project_image_tokens", "cuda", torch.device("cuda"), args)
    half = tuple(None if t is None else t.half() if t.is_floating_point() else t for t in args)
    assert backends.why_unable("project_image_tokens", "cuda", torch.device("cuda"), half) is None
    with pytest.raises(nk.BackendUnavailableError, match="cpu"):
        nk.project_image_tokens(*half, backend="cuda")


# ---- on a GPU ---------------------------------------------------------------------------------------------

def kernels_here() -> list[int]:
    """The GEMM kernels this GPU runs: mma.sync everywhere, wgmma + TMA on Hopper when built for sm_90a."""
    hopper = is_hopper(torch.device("cuda")) and "sm_90a" in nk.cuda_backend.build_info()
    return [80, 90] if hopper else [80]


def check_kernel(kernel, features, w1, b1, w2, b2, embeds, mask):
    out = embeds.clone()
    torch.ops.neva_cuda.project_image_tokens(features, w1, b1, w2, b2, out, mask, kernel)
    check_written(out, features, w1, b1, w2, b2, embeds, mask)


def each_kernel(*inputs):
    for kernel in kernels_here():
        check_kernel(kernel, *inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("images", [1, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_triton_test_shapes(dtype, images, bias, poisoned_outputs):
    """vision 33 and hidden 70 are padded to whole 16-byte chunks; text 65 stores row tails element by element."""
    inputs = make_inputs(images, tokens=7, vision=33, hidden=70, text=65, seq=24, dtype=dtype, bias=bias,
                         device="cuda")
    check_projection(*inputs, backend="cuda")
    each_kernel(*inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("dims", [(40, 72, 56), (1000, 264, 136), (200, 1032, 68), (520, 96, 4104)])
def test_tile_edges_and_long_k(dtype, dims, poisoned_outputs):
    """K of 16 tiles (more than the pipeline's stages) with a partial last tile; M, N past a tile's edge; text 68
    puts every other output row 8 bytes off a 16-byte boundary."""
    vision, hidden, text = dims
    each_kernel(*make_inputs(3, 67, vision, hidden, text, seq=150, dtype=dtype, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_flat_layouts_and_non_contiguous_operands(dtype, poisoned_outputs):
    features, w1, b1, w2, b2, embeds, mask = make_inputs(3, 5, 40, 48, 72, 20, dtype, device="cuda")
    wide = torch.randn(15, 41, dtype=dtype, device="cuda")[:, 1:]  # rows 82 bytes apart, 2 bytes off
    wide.copy_(features.reshape(15, 40))
    each_kernel(wide, strided(w1), b1, w2.t().contiguous().t(), strided(b2), embeds.reshape(-1, 72),
                mask.reshape(-1))


@pytest.mark.gpu
def test_no_images_leaves_embeddings_alone():
    features, w1, b1, w2, b2, embeds, _ = make_inputs(1, 4, 16, 32, 24, 8, torch.float16, device="cuda")
    out = embeds.clone()
    nk.project_image_tokens(features[:0], w1, b1, w2, b2, out, torch.zeros(out.shape[:-1], dtype=torch.bool,
                                                                           device="cuda"), backend="cuda")
    assert torch.equal(out, embeds)


@pytest.mark.gpu
@pytest.mark.sanitizer
def test_small_projection(poisoned_outputs):
    each_kernel(*make_inputs(2, 9, 24, 40, 36, 16, torch.bfloat16, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("images", [1, 3])
def test_llava_shapes(dtype, images, poisoned_outputs):
    """LLaVA-1.5-7B: 576 tokens per image, CLIP-L 1024 -> 4096 -> 4096."""
    each_kernel(*make_inputs(images, 576, 1024, 4096, 4096, 2048, dtype, device="cuda"))


@pytest.mark.gpu
def test_forcing_a_kernel_this_gpu_cannot_run_is_an_error():
    inputs = make_inputs(1, 4, 16, 32, 24, 8, torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="'kernel' must be"):
        torch.ops.neva_cuda.project_image_tokens(*inputs, 75)
    if 90 not in kernels_here():
        with pytest.raises(RuntimeError, match="wgmma"):
            torch.ops.neva_cuda.project_image_tokens(*inputs, 90)
