"""Presets and the translation of llava-hf config.json files."""
import pytest

from neva_model import NevaConfig, NevaConfigError, from_hf_config

# llava-hf/llava-1.5-7b-hf's config.json: it leaves most values to transformers' defaults.
LLAVA_15_7B_HF = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}


def test_llava_15_7b_hf_config_is_the_preset():
    assert from_hf_config(LLAVA_15_7B_HF) == NevaConfig.from_name("llava-1.5-7b")
    assert NevaConfig.from_name("llava-1.5-7b").image_tokens_per_image == 576


def test_13b_preset_and_file_reading(tmp_path):
    import json
    hf = dict(LLAVA_15_7B_HF, text_config=dict(LLAVA_15_7B_HF["text_config"], hidden_size=5120,
                                               intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40))
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert from_hf_config(tmp_path) == from_hf_config(tmp_path / "config.json") == NevaConfig.from_name("llava-1.5-13b")


@pytest.mark.parametrize("text, theta, factor", [
    ({"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}}, 5e5, 4.0),  # transformers 4
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}}, 1e6, 2.0),  # transformers 5
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 100.0}}, 100.0, 1.0),
    ({}, 10000.0, 1.0),
])
def test_rope_settings(text, theta, factor):
    config = from_hf_config({"text_config": {**text, "num_key_value_heads": 8}})
    assert (config.text.rope_theta, config.text.rope_scaling_factor, config.text.num_kv_heads) == (theta, factor, 8)


def test_feature_layer_lists_strategy_bias_and_tying():
    config = from_hf_config({"vision_feature_layer": [-2, -5], "vision_feature_select_strategy": "full",
                             "multimodal_projector_bias": False, "text_config": {"tie_word_embeddings": True}})
    assert config.feature_layers == (-2, -5)
    assert config.image_tokens_per_image == 577
    assert (config.projector_bias, config.tie_word_embeddings) == (False, True)


@pytest.mark.parametrize("hf, message", [
    ({"text_config": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}}, "'yarn' is not supported"),
    ({"projector_hidden_act": "relu"}, "projector_hidden_act 'relu'"),
    ({"vision_feature_layer": 30}, "vision_feature_layer 30"),
    ({"vision_feature_select_strategy": "cls"}, "'default' or 'full'"),
    ({"text_config": {"num_attention_heads": 32, "num_key_value_heads": 6}}, "multiple of num_key_value_heads"),
    ({"model_type": "idefics"}, "is not 'llava'"),
])
def test_unsupported_settings_are_clear_errors(hf, message):
    with pytest.raises(NevaConfigError, match=message):
        from_hf_config(hf)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(NevaConfigError, match="known: llava-1.5-13b, llava-1.5-7b, neva-22b-class-nemotron, .*, tiny"):
        NevaConfig.from_name("llava-2")
    with pytest.raises(NevaConfigError, match="no config.json"):
        from_hf_config(tmp_path)


def test_head_dim_defaults_to_hidden_over_heads_however_it_is_written():
    text = {"hidden_size": 96, "num_attention_heads": 6}
    assert from_hf_config({"text_config": {**text, "head_dim": 16}}) == from_hf_config({"text_config": text})
    assert from_hf_config({"text_config": text}).text.head_dim == 16
    assert from_hf_config({"text_config": {**text, "head_dim": 24}}).text.head_dim == 24


def test_nemotron_text_config_with_transformers_defaults_and_its_own_keys():
    config = from_hf_config({"text_config": {"model_type": "nemotron"}})
    text = config.text
    assert (text.family, text.vocab_size, text.hidden_size, text.intermediate_size, text.num_layers) == \
        ("nemotron", 256000, 6144, 24576, 32)
    assert (text.num_heads, text.num_kv_heads, text.head_dim, text.hidden_act) == (48, 48, 128, "relu2")
    assert (text.norm_eps, text.partial_rotary_factor, text.rotary_dim, text.eos_token_id) == (1e-5, 0.5, 64, 3)
    text = from_hf_config({"text_config": {
        "model_type": "nemotron", "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2,
        "head_dim": 24, "norm_eps": 1e-3, "attention_bias": True, "mlp_bias": True,
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0,
                            "partial_rotary_factor": 0.25}}}).text
    assert (text.num_kv_heads, text.head_dim, text.norm_eps, text.rotary_dim) == (2, 24, 1e-3, 6)
    assert (text.rope_theta, text.rope_scaling_factor, text.attention_bias, text.mlp_bias) == (500.0, 2.0, True, True)
    # transformers 4 wrote partial_rotary_factor at the top level of the text config
    assert from_hf_config({"text_config": {"model_type": "nemotron", "partial_rotary_factor": 1.0}}).text.rotary_dim \
        == 128


@pytest.mark.parametrize("text, message", [
    ({"model_type": "gemma"}, "text model_type 'gemma' is not supported"),
    ({"model_type": "nemotron", "hidden_act": "swish"}, "hidden_act 'swish' is not supported for nemotron"),
    ({"model_type": "llama", "hidden_act": "relu2"}, "hidden_act 'relu2' is not supported for llama"),
    ({"model_type": "nemotron", "head_dim": 10, "partial_rotary_factor": 0.5}, "an even, non-zero number"),
    ({"model_type": "nemotron", "partial_rotary_factor": 0.0}, "'partial_rotary_factor' must be a finite number > 0"),
])
def test_unsupported_nemotron_settings_are_clear_errors(text, message):
    with pytest.raises(NevaConfigError, match=message):
        from_hf_config({"text_config": text})


def test_every_ungated_activation_the_config_accepts_has_a_function():
    from neva_model.config import UNGATED_ACTIVATIONS
    from neva_model.decoder import _ACTIVATIONS
    assert set(UNGATED_ACTIVATIONS) == set(_ACTIVATIONS)
