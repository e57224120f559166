"""LLaVA's projector and image-token merge -> one neva_kernels.project_image_tokens.

transformers' LlavaModel projects the vision features (Linear -> GELU -> Linear) and masked-scatters them into the
prompt's embeddings; the patched forward does both in one call, then hands the embeddings to the stock forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llava.modeling_llava import LlavaModel

import neva_kernels as nk

# Arguments whose handling the fused path does not reproduce (per-image sizes, precomputed vision outputs).
_STOCK_ONLY = ("image_sizes", "mm_encoder_outputs")


def is_llava(module: nn.Module) -> bool:
    return isinstance(module, LlavaModel) and type(module).forward is LlavaModel.forward


def why_not_llava_projector(model: nn.Module) -> str | None:
    """None when the projector is Linear -> GELU (erf) -> Linear, the maths of project_image_tokens."""
    projector = model.multi_modal_projector
    linears = [getattr(projector, name, None) for name in ("linear_1", "linear_2")]
    if not all(isinstance(layer, nn.Linear) for layer in linears):
        return "its projector is not two nn.Linear layers (linear_1, linear_2)"
    x = torch.linspace(-6, 6, 97, device=linears[0].weight.device)
    if not torch.allclose(projector.act(x), F.gelu(x), rtol=1e-5, atol=1e-6):
        return f"its projector activation {type(projector.act).__name__} is not the erf GELU"
    return None


def _vision_features(model: nn.Module, pixel_values: torch.Tensor, layer, strategy) -> torch.Tensor:
    """The vision tower's selected hidden states [images, tokens, width], as LlavaModel.get_image_features picks them."""
    config = model.config
    layer = config.vision_feature_layer if layer is None else layer
    strategy = config.vision_feature_select_strategy if strategy is None else strategy
    hidden = model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
    chosen = [hidden[i] for i in ([layer] if isinstance(layer, int) else layer)]
    return torch.cat([h[:, 1:] if strategy == "default" else h for h in chosen], dim=-1)


def llava_forward(model: nn.Module, input_ids=None, pixel_values=None, inputs_embeds=None, **kwargs):
    """LlavaModel.forward with project_image_tokens; calls it cannot express go to the stock forward whole.

    The stock forward then receives the merged embeddings and no pixels, so it only runs the language model.
    """
    stock = LlavaModel.forward.__get__(model)
    first, second = model.multi_modal_projector.linear_1, model.multi_modal_projector.linear_2
    if pixel_values is None or input_ids is None or inputs_embeds is not None or any(
            kwargs.get(name) is not None for name in _STOCK_ONLY):
        return stock(input_ids=input_ids, pixel_values=pixel_values, inputs_embeds=inputs_embeds, **kwargs)
    embeds = model.get_input_embeddings()(input_ids)
    if embeds.dtype != first.weight.dtype:  # the stock forward casts the projected features; the kernel cannot
        return stock(input_ids=input_ids, pixel_values=pixel_values, **kwargs)
    features = _vision_features(model, pixel_values, kwargs.get("vision_feature_layer"),
                                kwargs.get("vision_feature_select_strategy"))
    embeds = nk.project_image_tokens(features, first.weight, first.bias, second.weight, second.bias, embeds,
                                     input_ids == model.config.image_token_id)
    return stock(inputs_embeds=embeds, **kwargs)
