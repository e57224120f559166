"""Drop-in acceleration of Hugging Face transformers models with neva_kernels, for inference and training.

    import neva_kernels.integrations.transformers as neva_hf    # registers attn_implementation="neva"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="neva")   # attention only, or:
    neva_hf.accelerate(model)   # RMSNorm (+ fused residual add), rotary, LLaVA's projector + merge, attention
    neva_hf.restore(model)      # the stock forwards and attention again

accelerate() replaces only what it can prove computes the same maths (each candidate is probed on random inputs),
refuses a model where a module of a known kind computes something else (e.g. Gemma's (1 + weight) RMSNorm), and
leaves every other module alone. Patches are per module instance: other models in the process are untouched.
"""
from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from neva_kernels.checks import expect
from neva_kernels.errors import NevaTypeError

from . import hf_attention, hf_llava, hf_rms_norm, hf_rotary

ATTENTION = "neva"
AttentionInterface.register(ATTENTION, hf_attention.attention_forward)
AttentionMaskInterface.register(ATTENTION, hf_attention.attention_mask)

OP = "accelerate"
_log = logging.getLogger(__name__)


@dataclass
class Acceleration:
    """What accelerate() changed, kept as `model.neva_acceleration` until restore()."""
    replaced: list[tuple[str, str]] = field(default_factory=list)  # (module path, the neva op that runs it now)
    kept: list[tuple[str, str]] = field(default_factory=list)      # (module path, why its stock code still runs)
    previous_attention: dict[str, str] = field(default_factory=dict)  # attn_implementation per (sub-)config
    patched: list[nn.Module] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        counts = Counter(what for _, what in self.replaced)
        lines = [f"neva accelerate: {count} x {what}" for what, count in counts.items()]
        return "\n".join(lines + [f"  kept {path or 'model'}: {why}" for path, why in self.kept])


@dataclass(frozen=True)
class _Patch:
    module: nn.Module
    forward: Callable
    path: str
    what: str


def _refuse_unless(reason: str | None, path: str, module: nn.Module, kind: str) -> None:
    expect(reason is None, OP, f"'{path}' ({type(module).__name__}) must compute {kind} to be accelerated, but "
                               f"{reason}; this model is refused rather than patched wrongly")


def _module_patches(model: nn.Module) -> list[_Patch]:
    """RMSNorm, rotary and LLaVA patches, every candidate probed; raises before anything is changed."""
    patches = []
    for path, module in model.named_modules():
        if hf_rms_norm.is_rms_norm(module):
            _refuse_unless(hf_rms_norm.why_not_llama_rms_norm(module), path, module, "LLaMA's RMSNorm")
            forward = functools.partial(hf_rms_norm.rms_norm_forward, module, hf_rms_norm.epsilon(module))
            patches.append(_Patch(module, forward, path, "RMSNorm -> rms_norm"))
        elif hf_rotary.uses_rotary(module):
            _refuse_unless(hf_rotary.why_not_llama_rotary(module), path, module, "LLaMA's rotary embedding")
            patches.append(_Patch(module, hf_rotary.rotary_forward(module), path, "rotary -> rotary_embedding"))
        elif hf_llava.is_llava(module):
            _refuse_unless(hf_llava.why_not_llava_projector(module), path, module, "LLaVA's projector")
            patches.append(_Patch(module, functools.partial(hf_llava.llava_forward, module), path,
                                  "LLaVA projector + image merge -> project_image_tokens"))
    if any(p.what.startswith("rotary") for p in patches):
        for path, module in model.named_modules():
            if type(module).__name__.endswith("RotaryEmbedding"):
                _refuse_unless(hf_rotary.why_not_llama_cos_sin(module), path, module, "LLaMA's cos/sin")
    return patches


def _fused_layer_patches(model: nn.Module, norms: set[nn.Module], kept: list) -> list[_Patch]:
    """Decoder layers whose post-attention residual add can run inside the (patched) post_attention_layernorm."""
    patches = []
    for path, layer in model.named_modules():
        if getattr(layer, "post_attention_layernorm", None) not in norms:
            continue
        if hf_rms_norm.has_llama_layer_forward(layer):
            patches.append(_Patch(layer, functools.partial(hf_rms_norm.fused_layer_forward, layer), path,
                                  "decoder layer: residual add fused into rms_norm"))
        else:
            kept.append((path, f"residual add not fused: {type(layer).__name__}.forward is not LLaMA's"))
    return patches


def _attention_implementations(model: PreTrainedModel) -> dict[str, str]:
    """{"": the model's attn_implementation, sub-config name: its own}: the form set_attn_implementation takes."""
    config = model.config
    subs = {key: getattr(config, key) for key in getattr(config, "sub_configs", {})}
    return {"": config._attn_implementation,
            **{key: sub._attn_implementation for key, sub in subs.items() if sub is not None}}


def accelerate(model: PreTrainedModel) -> PreTrainedModel:
    """Patch a loaded transformers model in place to run neva_kernels; returns it. See the module docstring.

    The record of what was replaced and what was kept (and why) is `model.neva_acceleration`; its summary() is
    logged at INFO level. Gradients flow through the kernels' backward ops, so the model trains as before.
    """
    if not isinstance(model, PreTrainedModel):
        raise NevaTypeError(f"{OP}: 'model' must be a transformers PreTrainedModel, got {type(model).__name__}")
    expect(getattr(model, "neva_acceleration", None) is None, OP,
           "'model' must not be accelerated already, got one with model.neva_acceleration; call restore(model) first")
    record = Acceleration()
    patches = _module_patches(model)
    patches += _fused_layer_patches(model, {p.module for p in patches if p.what.startswith("RMSNorm")}, record.kept)
    record.previous_attention = _attention_implementations(model)
    model.set_attn_implementation(ATTENTION)
    for key, implementation in _attention_implementations(model).items():
        if implementation == ATTENTION:
            record.replaced.append((key, f"attention -> flash_attention ('{ATTENTION}')"))
        else:  # transformers declined to switch this (sub-)model and warned why
            record.kept.append((key, f"attention stays '{implementation}'"))
    for patch in patches:
        patch.module.forward = patch.forward
        record.patched.append(patch.module)
        record.replaced.append((patch.path, patch.what))
    model.neva_acceleration = record
    _log.info("%s", record.summary())
    return model


def restore(model: PreTrainedModel) -> PreTrainedModel:
    """Undo accelerate(): the stock forwards and the attention implementations the model had before."""
    record = getattr(model, "neva_acceleration", None)
    expect(isinstance(record, Acceleration), "restore",
           "'model' must have been accelerated by accelerate(), got a model without model.neva_acceleration")
    for module in record.patched:
        del module.forward
    model.set_attn_implementation(record.previous_attention)
    del model.neva_acceleration
    return model
