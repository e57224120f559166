"""neva_model.tokenizer on small tokenizers built here, compared with transformers loading the same files."""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from neva_kernels.errors import NevaTypeError, NevaValueError
from neva_model import tokenizer as tokenizer_module
from neva_model.prompts import SteerLMAttributes, build_prompt
from neva_model.tokenizer import NevaTokenizerError, load_tokenizer

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<image>", "<|end|>"]
CORPUS = [
    "USER: What is in this picture? ASSISTANT: A cat sitting on a mat.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "The quick brown fox jumps over the lazy dog; numbers 0123456789 and punctuation!?",
]
TEXTS = [
    "What is in this picture?",
    "  leading spaces, tabs\tand\nnew lines  ",
    "unseen wörds ünïcode 漢字 and emoji 🙂",
    "",
    build_prompt("What is shown here?"),
    build_prompt("Describe it.", steerlm=SteerLMAttributes(), history=[("Hi <image>", "Hello.")]),
]


def save_tokenizer(directory, with_image_token: bool = True) -> None:
    """A byte-level BPE (any text round-trips) whose post-processor prepends <s>, like LLaMA's."""
    specials = SPECIAL_TOKENS if with_image_token else [t for t in SPECIAL_TOKENS if t != "<image>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 4, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    directory.mkdir(parents=True, exist_ok=True)
    bpe.save(str(directory / "tokenizer.json"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe")
    save_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(model_dir, hf_tokenizer, text):
    ours = load_tokenizer(model_dir)
    assert ours.encode(text) == hf_tokenizer.encode(text)  # both put <s> first
    assert ours.encode(text, add_bos=False) == hf_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS[:4])
def test_round_trip(model_dir, text):
    ours = load_tokenizer(model_dir)
    assert ours.decode(ours.encode(text)) == text
    assert ours.decode(torch.tensor(ours.encode(text))) == text


def test_special_tokens_and_image_placeholder(model_dir):
    ours = load_tokenizer(model_dir)
    vocab = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert ours.bos_token_id == vocab.token_to_id("<s>")
    assert ours.eos_token_id == vocab.token_to_id("</s>")
    assert ours.image_token_id == vocab.token_to_id("<image>")
    ids = ours.encode(build_prompt("Is it red?"))
    assert ids[0] == ours.bos_token_id and ids.count(ours.image_token_id) == 1
    prompt = build_prompt("Is it red?")
    assert ours.decode(ids, skip_special_tokens=False) == "<s>" + prompt
    assert ours.decode(ids) == prompt.replace("<image>", "")


def test_expand_image_tokens(model_dir):
    ours = load_tokenizer(model_dir)
    image = ours.image_token_id
    ids = [ours.bos_token_id, 7, image, 8, image, 9]
    expanded = ours.expand_image_tokens(ids, 3, num_images=2)
    assert expanded == [ours.bos_token_id, 7, image, image, image, 8, image, image, image, 9]
    assert ours.expand_image_tokens(torch.tensor(ids), 1) == ids
    assert ours.expand_image_tokens([5, 6], 4) == [5, 6]
    with pytest.raises(NevaValueError, match=r"holds 2 image placeholder\(s\) '<image>' but 1 image"):
        ours.expand_image_tokens(ids, 3, num_images=1)
    with pytest.raises(NevaValueError, match="num_image_tokens"):
        ours.expand_image_tokens(ids, 0)


def test_bad_ids(model_dir):
    ours = load_tokenizer(model_dir)
    size = ours.vocab_size
    assert size == Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    with pytest.raises(NevaValueError, match=rf"ids\[1\] = {size} is outside the vocabulary \[0, {size}\)"):
        ours.decode([3, size])
    with pytest.raises(NevaValueError, match=r"ids\[0\] = -1"):
        ours.expand_image_tokens([-1], 2)
    with pytest.raises(NevaTypeError, match=r"ids\[0\] must be an int"):
        ours.decode([1.0])
    with pytest.raises(NevaValueError, match="1-D integer tensor"):
        ours.decode(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(NevaTypeError, match="sequence of ints"):
        ours.decode("abc")
    with pytest.raises(NevaTypeError, match="text must be a str"):
        ours.encode(["abc"])


def test_configs_set_bos_eos_and_add_bos(tmp_path):
    save_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": False, "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}
    ))
    # special_tokens_map.json wins over tokenizer_config.json, as in transformers.
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|end|>"}}))
    ours = load_tokenizer(tmp_path)
    vocab = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ours.eos_token_id == vocab.token_to_id("<|end|>")
    assert ours.bos_token_id == vocab.token_to_id("<s>")
    plain = ours.encode("a cat", add_bos=False)
    assert ours.encode("a cat", add_bos=None) == plain  # as the config says: no BOS
    assert ours.encode("a cat") == [ours.bos_token_id] + plain  # an explicit request still gets it


def test_missing_tokens_are_clear_errors(tmp_path):
    save_tokenizer(tmp_path, with_image_token=False)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None}))
    ours = load_tokenizer(tmp_path)
    with pytest.raises(NevaTokenizerError, match="image placeholder token '<image>' is not in the vocabulary"):
        ours.image_token_id
    with pytest.raises(NevaTokenizerError, match="defines no BOS token"):
        ours.encode("a cat")
    assert ours.encode("a cat", add_bos=None) == ours.encode("a cat", add_bos=False)
    assert load_tokenizer(tmp_path, image_token="<|end|>").image_token_id == ours._token_to_id("<|end|>")


def test_load_errors(tmp_path):
    with pytest.raises(NevaTokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "absent")
    with pytest.raises(NevaTokenizerError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(NevaTokenizerError, match="cannot load .*tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(NevaTokenizerError, match="cannot read .*tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": 5}))
    with pytest.raises(NevaTokenizerError, match="eos_token must be a string"):
        load_tokenizer(tmp_path)


def test_sentencepiece_missing_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    monkeypatch.setattr(tokenizer_module, "_sentencepiece_available", lambda: False)
    with pytest.raises(NevaTokenizerError, match=r"pip install 'neva\[sentencepiece\]'"):
        load_tokenizer(tmp_path)
    assert tokenizer_module._installed("json")
    assert not tokenizer_module._installed("neva_no_such_package.module")  # a missing parent answers False


def test_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(tmp_path / "tokenizer"), vocab_size=400,
        model_type="bpe", user_defined_symbols=["<image>"], byte_fallback=True, minloglevel=2,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
    )
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    ours = load_tokenizer(tmp_path)
    text = "What is in this picture? A cat."
    assert ours.encode(text, add_bos=False) == processor.encode(text)
    assert ours.encode(text) == [processor.bos_id()] + processor.encode(text)
    assert ours.eos_token_id == processor.eos_id()
    assert ours.image_token_id == processor.piece_to_id("<image>")
    assert ours.decode(ours.encode(text)) == text
