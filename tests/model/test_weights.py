"""Loading llava-hf checkpoints: shards, dtypes, both transformers naming schemes, and errors naming the tensor."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from neva_model import Neva, NevaWeightsError, load_neva

from tests.model.tiny_llava import IMAGE_SIZE, PARITY_CASES, random_prompt, write_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
CASE = PARITY_CASES[3]  # tied embeddings, fused q/k/v of 8 query and 2 key/value heads


def _logits_error(model, hf, case=CASE):
    input_ids = torch.tensor([random_prompt(case, 5, image_at=2, generator=torch.Generator().manual_seed(0))])
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = hf(input_ids=input_ids, pixel_values=pixel_values).logits
        return (model.forward_expanded(input_ids, pixel_values).float() - expected.float()).abs().max().item()


def test_sharded_checkpoint_loads(tmp_path):
    hf = write_checkpoint(CASE, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 3
    assert _logits_error(load_neva(tmp_path), hf) <= 1e-4


def test_bfloat16_checkpoint_loads_in_its_dtype_or_another(tmp_path):
    hf = write_checkpoint(CASE, tmp_path, dtype=torch.bfloat16)
    model = load_neva(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    hf_q = hf.model.language_model.layers[1].self_attn.q_proj.weight
    assert torch.equal(model.language_model.layers[1].self_attn.qkv_proj.weight[:hf_q.shape[0]], hf_q)
    assert model.lm_head.weight is model.language_model.embed_tokens.weight
    # transformers reads the same file into float32 (hf.float() would keep RoPE frequencies rounded to bf16)
    hf32 = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert _logits_error(load_neva(tmp_path, dtype=torch.float32), hf32) <= 1e-4
    assert {p.dtype for p in load_neva(tmp_path, dtype=torch.float16).parameters()} == {torch.float16}


def test_transformers_5_tensor_names_load(tmp_path):
    hf = write_checkpoint(PARITY_CASES[0], tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {}
    for name, tensor in tensors.items():
        name = name.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head.",
                                                                                       "lm_head.")
        renamed[name.replace("vision_tower.", "model.vision_tower.vision_model.")
                .replace("multi_modal_projector.", "model.multi_modal_projector.")] = tensor
    save_file(renamed, tmp_path / "model.safetensors")
    assert _logits_error(load_neva(tmp_path), hf, PARITY_CASES[0]) <= 1e-4


def _rewrite(directory, edit):
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


def test_tied_embeddings_load_with_or_without_lm_head_in_the_file(tmp_path):
    hf = write_checkpoint(CASE, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "language_model.lm_head.weight" not in tensors  # transformers leaves the tied copy out
    tensors["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    model = load_neva(tmp_path)
    assert model.lm_head.weight is model.language_model.embed_tokens.weight
    assert _logits_error(model, hf) <= 1e-4


def test_a_missing_tensor_is_named(tmp_path):
    write_checkpoint(CASE, tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("language_model.model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(NevaWeightsError, match=r"language_model\.layers\.1\.self_attn\.qkv_proj\.weight \(k_proj\)"):
        load_neva(tmp_path)


def test_an_unexpected_tensor_is_named(tmp_path):
    write_checkpoint(CASE, tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"vision_tower.encoder.layers.0.mlp.fc3.weight": torch.zeros(2)}))
    with pytest.raises(NevaWeightsError, match=r"unexpected tensor 'vision_tower\.encoder\.layers\.0\.mlp\.fc3\.weight'"):
        load_neva(tmp_path)


def test_a_misshaped_tensor_is_named(tmp_path):
    write_checkpoint(CASE, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(NevaWeightsError, match=r"'language_model\.model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' "
                                               r"has shape \[\d+, \d+\], the model expects"):
        load_neva(tmp_path)


def test_llava_7b_preset_on_the_meta_device_has_the_checkpoints_parameter_count():
    with torch.device("meta"):
        model = Neva("llava-1.5-7b")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
