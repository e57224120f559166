"""The llava-hf checkpoint writer: neva's loader and transformers' LLaVA both read what it writes."""
import json

import pytest
import torch

from neva_model.model import Neva
from neva_model.train.export import hf_state_dict, save_checkpoint
from neva_model.train.initialize import initialize
from neva_model.train.recipe import model_config
from neva_model.train.vocabulary import BOS, PAD
from neva_model.weights import load_neva

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoint")
    model = initialize(Neva(model_config(vocab_size=53)), std=0.2)  # large weights: differences show
    save_checkpoint(model, directory, BOS, PAD)
    return model, directory


def test_names_are_transformers_and_fused_projections_are_split():
    model = Neva(model_config(vocab_size=53))
    names = hf_state_dict(model)
    assert "language_model.model.layers.0.self_attn.k_proj.weight" in names
    assert "language_model.model.layers.2.mlp.up_proj.weight" in names
    assert "vision_tower.encoder.layers.0.self_attn.v_proj.bias" in names
    assert "language_model.lm_head.weight" in names and "multi_modal_projector.linear_2.bias" in names
    assert not any("qkv_proj" in n or "gate_up_proj" in n for n in names)
    assert sum(t.numel() for t in names.values()) == sum(p.numel() for p in model.parameters())


def test_neva_loads_it_back_exactly(written):
    model, directory = written
    loaded = load_neva(directory)
    assert loaded.config == model.config
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(expected, actual), name
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    assert preprocessor["crop_size"]["height"] == model.config.vision.image_size


def test_transformers_llava_gives_the_same_logits(written):
    transformers = pytest.importorskip("transformers")
    model, directory = written
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(directory).eval()
    tokens = model.config.image_tokens_per_image
    ids = torch.tensor([[BOS] + [model.config.image_token_index] * tokens + [7, 9, 11, 30]])
    pixels = torch.randn(1, 3, model.config.vision.image_size, model.config.vision.image_size)
    with torch.no_grad():
        expected = hf(input_ids=ids, pixel_values=pixels).logits
        actual = model.eval().forward_expanded(ids, pixels)
    assert (actual - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
