"""The NeVA presets on Nemotron decoders: they instantiate on the meta device with transformers' parameter count,
and their reported memory follows from the count and the KV cache layout."""
import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from neva_model.config import NEVA_PRESETS, NevaConfig
from neva_model.sizing import DTYPE_BYTES, format_table, parameter_count, size_report
from neva_model.train.export import hf_config


@pytest.mark.parametrize("name", list(NEVA_PRESETS))
def test_preset_parameter_count_equals_transformers_on_meta(name):
    config = NevaConfig.from_name(name)
    hf = LlavaConfig(**hf_config(config, bos_token_id=2, pad_token_id=0))
    assert hf.text_config.model_type == "nemotron"
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(hf)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_reports_follow_from_the_count_and_the_cache_layout():
    config = NevaConfig.from_name("neva-22b-class-nemotron")
    report = size_report(config)
    assert 21e9 < report.parameters < 23e9  # the "22B class"
    assert report.weight_bytes == {"bf16": 2 * report.parameters, "fp16": 2 * report.parameters,
                                   "fp8": report.parameters}
    # K and V, 48 layers, 8 KV heads of 128 features
    assert report.kv_bytes_per_token == {d: 2 * 48 * 8 * 128 * b for d, b in DTYPE_BYTES.items()}
    assert 42e9 < size_report(NevaConfig.from_name("neva-43b-class-nemotron")).parameters < 44e9
    table = format_table(list(NEVA_PRESETS))
    assert all(name in table for name in NEVA_PRESETS) and "KV/token fp8" in table
