"""project_image_tokens: LLaVA's Linear -> GELU -> Linear projector, written into the image-token rows."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends, reference
from ..checks import (expect, expect_contiguous, expect_same_device, expect_same_dtype, expect_shape, expect_tensor,
                      value_checks_enabled)
from ._autograd import register_recompute_autograd
from ._library import define

OP = "project_image_tokens"


def _check_counts(image_features: Tensor, image_token_mask: Tensor) -> None:
    rows = image_features.numel() // image_features.shape[-1] if image_features.shape[-1] else 0
    tokens = int(image_token_mask.sum())
    expect(tokens == rows, OP,
           lambda: f"Image features and image tokens do not match: tokens: {tokens}, features {rows} "
                   "('image_token_mask' must select one row of 'inputs_embeds' per image feature)")


@define("project_image_tokens", mutates_args=("inputs_embeds",))
def _project_image_tokens(image_features: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                          inputs_embeds: Tensor, image_token_mask: Tensor, backend: str) -> None:
    if value_checks_enabled(image_features):
        _check_counts(image_features, image_token_mask)
    backends.implementation(OP, backend)(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask)


@torch.library.register_fake(_project_image_tokens.overload)
def _(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask, backend):
    return None


@define("project_image_tokens_functional")
def _project_image_tokens_functional(image_features: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                                     b2: Tensor | None, inputs_embeds: Tensor, image_token_mask: Tensor,
                                     backend: str) -> Tensor:
    out = inputs_embeds.clone()
    _project_image_tokens(image_features, w1, b1, w2, b2, out, image_token_mask, backend)
    return out


@torch.library.register_fake(_project_image_tokens_functional.overload)
def _(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask, backend):
    return inputs_embeds.new_empty(inputs_embeds.shape)


register_recompute_autograd(_project_image_tokens_functional.overload, reference.project_image_tokens_functional)


def _check(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask) -> None:
    expect_tensor(OP, "image_features", image_features, ndim=(2, 3))
    vision_dim = image_features.shape[-1]
    expect_tensor(OP, "w1", w1, ndim=2)
    expect_shape(OP, "w1", w1, [None, vision_dim], "([hidden, vision_dim] as nn.Linear stores it)")
    expect_tensor(OP, "w2", w2, ndim=2)
    expect_shape(OP, "w2", w2, [None, w1.shape[0]], "([text_dim, hidden] as nn.Linear stores it)")
    for name, bias, size in (("b1", b1, w1.shape[0]), ("b2", b2, w2.shape[0])):
        if bias is not None:
            expect_tensor(OP, name, bias, ndim=1)
            expect_shape(OP, name, bias, [size])
    expect_tensor(OP, "inputs_embeds", inputs_embeds, ndim=(2, 3))
    expect_shape(OP, "inputs_embeds", inputs_embeds, [None] * (inputs_embeds.dim() - 1) + [w2.shape[0]],
                 "(last dim = the projector's output size)")
    expect_contiguous(OP, "inputs_embeds", inputs_embeds, "image rows are written into it in place")
    expect_tensor(OP, "image_token_mask", image_token_mask, dtypes=(torch.bool,))
    expect_shape(OP, "image_token_mask", image_token_mask, list(inputs_embeds.shape[:-1]),
                 "(the shape of inputs_embeds without its last dim)")
    expect_same_dtype(OP, image_features=image_features, w1=w1, b1=b1, w2=w2, b2=b2, inputs_embeds=inputs_embeds)
    expect_same_device(OP, image_features=image_features, w1=w1, b1=b1, w2=w2, b2=b2, inputs_embeds=inputs_embeds,
                       image_token_mask=image_token_mask)


def project_image_tokens(image_features: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                         inputs_embeds: Tensor, image_token_mask: Tensor, *, backend: str | None = None) -> Tensor:
    """inputs_embeds[image_token_mask] = Linear(w2, b2)(GELU(Linear(w1, b1)(image_features))), row by row.

    image_features [N, Dv] or [images, tokens_per_image, Dv]; w1 [Dh, Dv], w2 [Dt, Dh] (nn.Linear layout);
    b1/b2 optional; inputs_embeds [B, S, Dt] or [T, Dt]; image_token_mask bool [B, S] or [T], with exactly N
    rows set (else a NevaValueError, as HF transformers raises). Feature row i goes to the i-th set row.

    Returns the filled embeddings: `inputs_embeds` itself, written in place, or, when autograd must track
    the call (grad enabled and an input requires grad), a new tensor with `inputs_embeds` left untouched.
    """
    args = (image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask)
    _check(*args)
    chosen = backends.choose(OP, image_features.device, args, backend)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return _project_image_tokens_functional(*args, chosen)
    _project_image_tokens(*args, chosen)
    return inputs_embeds
