"""Write a Neva as a llava-hf checkpoint: config.json, model.safetensors (the tensor names transformers writes),
preprocessor_config.json; the tokenizer files come from neva_model.train.vocabulary."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import NevaConfig
from ..fused_linear import FusedLinear
from ..image import CLIP_MEAN, CLIP_STD
from ..model import Neva

# This model's name prefixes -> transformers' (the layout LlavaForConditionalGeneration.save_pretrained writes).
_PREFIXES = (("language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
             ("vision_tower.", "vision_tower."), ("multi_modal_projector.", "multi_modal_projector."))


def _hf_name(name: str) -> str:
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise KeyError(f"no checkpoint name for model tensor {name!r}")


def hf_state_dict(model: Neva) -> dict[str, torch.Tensor]:
    """The model's tensors under transformers' names, fused projections split into their parts."""
    fused = {name: module for name, module in model.named_modules() if isinstance(module, FusedLinear)}
    tensors = {}
    for name, tensor in model.state_dict().items():
        module_name, kind = name.rsplit(".", 1)
        if module_name in fused:
            parent = module_name.rsplit(".", 1)[0]
            for part in fused[module_name].part_sizes:
                tensors[_hf_name(f"{parent}.{part}.{kind}")] = tensor[fused[module_name].part_rows(part)]
        else:
            tensors[_hf_name(name)] = tensor
    return {name: tensor.detach().contiguous() for name, tensor in sorted(tensors.items())}


def _rope_parameters(text) -> dict:
    params = {"rope_theta": text.rope_theta, "rope_type": "default"}
    if text.rope_scaling_factor != 1.0:
        params.update(rope_type="linear", factor=text.rope_scaling_factor)
    if text.partial_rotary_factor != 1.0 or text.family == "nemotron":
        params["partial_rotary_factor"] = text.partial_rotary_factor
    return params


def hf_config(config: NevaConfig, bos_token_id: int, pad_token_id: int) -> dict:
    """The llava-hf config.json of `config` (a LLaMA or Nemotron text model)."""
    text, vision = config.text, config.vision
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "dtype": "float32",
        "image_token_index": config.image_token_index, "image_seq_length": config.image_tokens_per_image,
        "projector_hidden_act": "gelu", "multimodal_projector_bias": config.projector_bias,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "tie_word_embeddings": config.tie_word_embeddings,
        "text_config": {
            "model_type": text.family, "vocab_size": text.vocab_size, "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_layers,
            "num_attention_heads": text.num_heads, "num_key_value_heads": text.num_kv_heads,
            "head_dim": text.attention_head_dim, "hidden_act": text.hidden_act,
            "max_position_embeddings": text.max_position_embeddings,
            ("rms_norm_eps" if text.family == "llama" else "norm_eps"): text.norm_eps,
            "rope_parameters": _rope_parameters(text),
            "attention_bias": text.attention_bias, "mlp_bias": text.mlp_bias,
            "bos_token_id": bos_token_id, "eos_token_id": text.eos_token_id, "pad_token_id": pad_token_id,
            "tie_word_embeddings": config.tie_word_embeddings,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size, "num_hidden_layers": vision.num_layers,
            "num_attention_heads": vision.num_heads, "image_size": vision.image_size,
            "patch_size": vision.patch_size, "num_channels": vision.num_channels, "hidden_act": "quick_gelu",
            "layer_norm_eps": vision.layer_norm_eps,
        },
    }


def preprocessor_config(image_size: int) -> dict:
    """transformers' CLIPImageProcessor settings that match neva_model.image.preprocess_images."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD), "do_convert_rgb": True}


def save_checkpoint(model: Neva, directory: Path, bos_token_id: int, pad_token_id: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write = (lambda name, data: (directory / name).write_text(json.dumps(data, indent=2) + "\n"))
    write("config.json", hf_config(model.config, bos_token_id, pad_token_id))
    write("preprocessor_config.json", preprocessor_config(model.config.vision.image_size))
    save_file(hf_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
