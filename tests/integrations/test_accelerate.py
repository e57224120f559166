"""accelerate() / restore(): what is replaced and reported, what is refused (different maths) before anything
changes, restore() giving the stock model back, and torch.compile through the patched model."""
import copy

import pytest
import torch
from torch import nn
from transformers import CohereConfig, CohereForCausalLM, GemmaConfig, GemmaForCausalLM

import neva_kernels as nk
from neva_kernels.integrations.transformers import Acceleration, accelerate, restore
from tests.integrations.hf_models import build, prompts

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8)


def instance_forwards(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in vars(m)]


def test_llava_record_lists_every_replacement():
    model = accelerate(build("llava"))
    record = model.neva_acceleration
    assert isinstance(record, Acceleration) and record.kept == []
    kinds = [what for _, what in record.replaced]
    layers = model.config.text_config.num_hidden_layers
    assert kinds.count("RMSNorm -> rms_norm") == 2 * layers + 1
    assert kinds.count("rotary -> rotary_embedding") == layers
    assert kinds.count("decoder layer: residual add fused into rms_norm") == layers
    assert ("model", "LLaVA projector + image merge -> project_image_tokens") in record.replaced
    assert {path for path, what in record.replaced if what.startswith("attention")} == {"", "text_config",
                                                                                         "vision_config"}
    assert "neva accelerate: 1 x LLaVA projector" in record.summary()


def test_restore_gives_back_the_stock_model():
    stock = build("llava")
    model = copy.deepcopy(stock)
    inputs = prompts(model, [4, 6])
    accelerate(model)
    assert instance_forwards(model)
    restore(model)
    assert instance_forwards(model) == [] and not hasattr(model, "neva_acceleration")
    assert model.config._attn_implementation == stock.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock(**inputs).logits)


@pytest.mark.parametrize("family, config, module, reason", [
    (GemmaForCausalLM, GemmaConfig, "GemmaRMSNorm", "differs from x / rms.x. . weight"),
    (CohereForCausalLM, CohereConfig, "CohereAttention", "rotates differently from LLaMA's"),
])
def test_models_whose_maths_differ_are_refused_untouched(family, config, module, reason):
    model = family(config(**TINY)).eval()
    with pytest.raises(nk.NevaValueError, match=f"{module}.*{reason}.*refused"):
        accelerate(model)
    assert instance_forwards(model) == [] and model.config._attn_implementation == "sdpa"
    assert not hasattr(model, "neva_acceleration")


def test_bad_calls_are_refused():
    with pytest.raises(nk.NevaTypeError, match="'model' must be a transformers PreTrainedModel, got Linear"):
        accelerate(nn.Linear(2, 2))
    model = build("qwen2-gqa2-bias")
    with pytest.raises(nk.NevaValueError, match="without model.neva_acceleration"):
        restore(model)
    accelerate(model)
    with pytest.raises(nk.NevaValueError, match="call restore.model. first"):
        accelerate(model)


def test_full_graph_compile_of_an_accelerated_model():
    stock = build("llama-gqa3-headdim24-linear-rope")
    compiled = torch.compile(accelerate(copy.deepcopy(stock)), backend="eager", fullgraph=True)
    input_ids = prompts(stock, [7])["input_ids"]
    with torch.no_grad():
        expected = stock(input_ids=input_ids, use_cache=False).logits
        assert torch.allclose(compiled(input_ids=input_ids, use_cache=False).logits, expected, atol=1e-5)
