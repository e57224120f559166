"""Loading llava-hf checkpoints: shards, dtypes, both transformers naming schemes, and errors naming the tensor."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from neva_model import Neva, NevaConfigError, NevaWeightsError, load_neva

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


def test_tied_config_with_a_different_lm_head_in_the_file_is_untied_and_matches_transformers(tmp_path):
    hf = write_checkpoint(CASE, tmp_path)
    head = torch.randn_like(hf.lm_head.weight)
    _rewrite(tmp_path, lambda t: t.update({"language_model.lm_head.weight": head}))
    with pytest.warns(UserWarning, match="untied"):
        model = load_neva(tmp_path)
    assert model.lm_head.weight is not model.language_model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, head) and not model.config.tie_word_embeddings
    # transformers, given the same file, unties as well and uses the file's lm_head
    reference = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert torch.equal(reference.lm_head.weight, head)
    assert _logits_error(model, reference) <= 1e-4


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoint")
    write_checkpoint(CASE, directory)
    return directory


def _broken_copy(checkpoint_dir, tmp_path, name: str, content: bytes | str):
    import shutil
    broken = shutil.copytree(checkpoint_dir, tmp_path / "broken")
    (broken / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return broken


@pytest.mark.parametrize("name, content, message", [
    ("model.safetensors", "truncated", r"cannot read .*model\.safetensors: .*"),
    ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", r"cannot read .*model\.safetensors"),
    ("model.safetensors", b"", r"cannot read .*model\.safetensors"),
    ("config.json", "{\"text_config\": ", r"cannot read .*config\.json: Expecting value"),
    ("config.json", "[1, 2]", r"config\.json must hold a JSON object, got list"),
    ("config.json", "\xff\xfe", r"cannot read .*config\.json"),
    ("config.json", "[" * 100000 + "]" * 100000, r"cannot read .*config\.json"),
    ("model.safetensors.index.json", "{\"weight_map\": ", r"cannot read .*model\.safetensors\.index\.json"),
    ("model.safetensors.index.json", "{\"weight_map\": [\"model.safetensors\"]}", r"'weight_map' must be an object"),
    ("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"/etc/passwd\"}}", r"'/etc/passwd' must be a relative"),
    ("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"../checkpoint/model.safetensors\"}}",
     r"'\.\./checkpoint/model\.safetensors' must be a relative path inside"),
    ("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"gone.safetensors\"}}",
     r"'gone\.safetensors' does not exist"),
])
def test_unreadable_checkpoint_files_are_named(checkpoint_dir, tmp_path, name, content, message):
    if content == "truncated":
        content = (checkpoint_dir / name).read_bytes()[:-1000]
    broken = _broken_copy(checkpoint_dir, tmp_path, name, content)
    with pytest.raises((NevaConfigError, NevaWeightsError), match=message) as caught:
        load_neva(broken)
    assert str(broken) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["text_config"].update(num_attention_heads=0),
     r"text_config: 'num_attention_heads' must be >= 1, got 0"),
    (lambda c: c["text_config"].update(hidden_size=32.5), r"text_config: 'hidden_size' must be an int, got float"),
    (lambda c: c["vision_config"].update(image_size=-4), r"vision_config: 'image_size' must be >= 1, got -4"),
    (lambda c: c["text_config"].update(eos_token_id=96), r"eos_token_id must be token ids in \[0, vocab_size=96\)"),
    (lambda c: c.update(text_config="llama"), r"text_config must be an object, got str"),
    (lambda c: c["text_config"].update(rope_parameters=[1]), r"rope_parameters must be an object"),
])
def test_malformed_config_values_are_named_with_the_file(checkpoint_dir, tmp_path, edit, message):
    config = json.loads((checkpoint_dir / "config.json").read_text())
    edit(config)
    broken = _broken_copy(checkpoint_dir, tmp_path, "config.json", json.dumps(config))
    with pytest.raises(NevaConfigError, match=message) as caught:
        load_neva(broken)
    assert str(broken / "config.json") in str(caught.value)


def test_a_huge_vocab_in_config_is_a_shape_error_before_any_allocation(checkpoint_dir, tmp_path):
    config = json.loads((checkpoint_dir / "config.json").read_text())
    config["text_config"]["vocab_size"] = 10**12  # 10^12 x 64 float32 rows: 256 TB if it were allocated
    broken = _broken_copy(checkpoint_dir, tmp_path, "config.json", json.dumps(config))
    with pytest.raises(NevaWeightsError, match=r"embed_tokens\.weight' has shape \[96, 64\], the model expects "
                                               r"\[1000000000000, 64\]"):
        load_neva(broken)


def test_a_model_too_large_to_allocate_is_one_clear_error(checkpoint_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes\nmore")
    monkeypatch.setattr(Neva, "to_empty", refuse)
    with pytest.raises(NevaWeightsError, match=r"cannot allocate the model's [\d,]+ parameters in torch\.float32 "
                                               r"\([\d.e+-]+ GiB\) on cpu: DefaultCPUAllocator: can't allocate"):
        load_neva(checkpoint_dir)


def test_a_non_float_tensor_is_refused(checkpoint_dir, tmp_path):
    import shutil
    broken = shutil.copytree(checkpoint_dir, tmp_path / "broken")
    _rewrite(broken, lambda t: t.update({"multi_modal_projector.linear_1.weight":
                                         t["multi_modal_projector.linear_1.weight"].to(torch.int32)}))
    with pytest.raises(NevaWeightsError, match=r"'multi_modal_projector\.linear_1\.weight' has dtype I32"):
        load_neva(broken)


def test_model_dir_must_be_a_directory(checkpoint_dir, tmp_path):
    with pytest.raises(NevaConfigError, match=r"model\.safetensors is a file, not a directory"):
        load_neva(checkpoint_dir / "model.safetensors")
    with pytest.raises(NevaConfigError, match=r"nowhere does not exist"):
        load_neva(tmp_path / "nowhere")
