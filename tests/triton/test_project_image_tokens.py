"""The triton image-token projector against the float64 reference, by the tolerance rule.

The baseline is PyTorch eager in the input dtype, as HF transformers' LLaVA runs it: linear, GELU, linear,
masked_scatter into the embeddings. Rows that are not image tokens must come back bit for bit unchanged.
"""
import pytest
import torch
import torch.nn.functional as F

import neva_kernels as nk
from neva_kernels import reference
from neva_kernels.triton_kernels import project_image_tokens as project_image_tokens_kernels
from tests.helpers import assert_close_by_rule, strided
from tests.triton.test_flash_attention import DEVICE, GPU_DTYPES, INTERPRETER_DTYPES


def eager_projection(features, w1, b1, w2, b2, embeds, mask):
    rows = F.linear(F.gelu(F.linear(features.reshape(-1, features.shape[-1]), w1, b1)), w2, b2)
    return embeds.masked_scatter(mask[..., None], rows)


def make_inputs(images, tokens, vision, hidden, text, seq, dtype, bias=True, device=DEVICE):
    """Image rows placed at random positions of a [batch, seq] prompt batch with room for all of them."""
    batch = -(-images * tokens // seq) + 1
    rand = (lambda *shape, scale=1.0: torch.randn(*shape, dtype=dtype, device=device) * scale)
    features = rand(images, tokens, vision)
    w1, w2 = rand(hidden, vision, scale=vision ** -0.5), rand(text, hidden, scale=hidden ** -0.5)
    b1, b2 = (rand(hidden), rand(text)) if bias else (None, None)
    embeds = rand(batch, seq, text)
    mask = torch.zeros(batch * seq, dtype=torch.bool, device=device)
    mask[torch.randperm(batch * seq, device=device)[:images * tokens]] = True
    return features, w1, b1, w2, b2, embeds, mask.reshape(batch, seq)


def check_projection(features, w1, b1, w2, b2, embeds, mask, backend="triton"):
    out = embeds.clone()
    returned = nk.project_image_tokens(features, w1, b1, w2, b2, out, mask, backend=backend)
    assert returned is out
    check_written(out, features, w1, b1, w2, b2, embeds, mask)


def check_written(out, features, w1, b1, w2, b2, embeds, mask):
    """out: embeds with the projection written into its image-token rows, by whichever kernel."""
    as64 = (lambda t: None if t is None else t.double())
    truth = as64(embeds).clone()
    reference.project_image_tokens(as64(features), as64(w1), as64(b1), as64(w2), as64(b2), truth, mask)
    assert torch.equal(out[~mask], embeds[~mask]), "a row that is not an image token was changed"
    assert_close_by_rule(out, truth, eager_projection(features, w1, b1, w2, b2, embeds, mask), "projected rows")


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("images", [1, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_projection_matches_reference(dtype, images, bias, poisoned_outputs):
    check_projection(*make_inputs(images, tokens=7, vision=33, hidden=70, text=65, seq=24, dtype=dtype, bias=bias))


@pytest.mark.parametrize("images", [1, 3])
def test_tma_descriptor_path_matches_reference(images, monkeypatch, poisoned_outputs):
    """The sm90 path (tiles loaded through tensor descriptors), forced here; its dims keep rows 16-byte aligned."""
    monkeypatch.setattr(project_image_tokens_kernels, "use_tma", lambda *operands: True)
    check_projection(*make_inputs(images, tokens=7, vision=40, hidden=72, text=56, seq=24, dtype=torch.float16))


def test_flat_layouts_and_non_contiguous_weights(poisoned_outputs):
    features, w1, b1, w2, b2, embeds, mask = make_inputs(3, 5, 40, 48, 72, 20, torch.float16)
    check_projection(features.reshape(15, 40), strided(w1), b1, w2.t().contiguous().t(), strided(b2),
                     embeds.reshape(-1, 72), mask.reshape(-1))


def test_no_images_leaves_embeddings_alone():
    features, w1, b1, w2, b2, embeds, _ = make_inputs(1, 4, 16, 32, 24, 8, torch.float32)
    out = embeds.clone()
    nk.project_image_tokens(features[:0], w1, b1, w2, b2, out, torch.zeros(out.shape[:-1], dtype=torch.bool),
                            backend="triton")
    assert torch.equal(out, embeds)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("images", [1, 3])
def test_gpu_llava_shapes_match_reference(dtype, images, poisoned_outputs):
    """LLaVA-1.5-7B: 576 tokens per image, CLIP-L 1024 -> 4096 -> 4096."""
    check_projection(*make_inputs(images, 576, 1024, 4096, 4096, 2048, dtype, device="cuda"))
