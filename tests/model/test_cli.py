"""`neva ask` end to end on a tiny checkpoint: image file in, the greedy answer of transformers out."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

import neva_kernels
from neva_model.cli import _parser, _steerlm, main
from neva_model.image import preprocess_images
from neva_model.prompts import SteerLMAttributes, build_prompt
from neva_model.tokenizer import load_tokenizer

from tests.model.tiny_llava import IMAGE_SIZE, PARITY_CASES, write_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
WORDS = ["USER:", "ASSISTANT:", "What", "is", "in", "the", "picture?"]


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint):
    """The tiny checkpoint with a word-level tokenizer.json whose ids fit its vocabulary and image token."""
    return _with_tokenizer(*tiny_checkpoint)


@pytest.fixture(scope="module")
def nemotron_model_dir(tmp_path_factory):
    """A tiny LLaVA on a Nemotron decoder (partial rotary, LayerNorm1P, squared ReLU), with the same tokenizer."""
    case = next(c for c in PARITY_CASES if c.family == "nemotron")
    directory = tmp_path_factory.mktemp("nemotron")
    return _with_tokenizer(case, write_checkpoint(case, directory), directory)


def _with_tokenizer(case, hf, directory):
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "<image>": case.image_token_index}
    vocab.update({word: 3 + i for i, word in enumerate(WORDS)})
    vocab.update({f"w{i}": i for i in range(3 + len(WORDS), case.image_token_index)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<s>", "</s>", "<image>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    return case, hf, directory


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("checkpoint_dir", ["model_dir", "nemotron_model_dir"])
def test_ask_prints_the_greedy_answer_and_a_timing_line(checkpoint_dir, image_file, capsys, request):
    case, hf, directory = request.getfixturevalue(checkpoint_dir)
    question = "What is in the picture?"
    status = main(["ask", "--model", str(directory), "--image", str(image_file), question, "--max-new-tokens", "6",
                   "--dtype", "float32", "--device", "cpu", "--backend", "torch", "--block-size", "4"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert neva_kernels.backends._global_choice is None  # --backend holds for that run only

    tokenizer = load_tokenizer(directory)
    ids = tokenizer.expand_image_tokens(tokenizer.encode(build_prompt(question)), case.image_tokens, 1)
    pixel_values = preprocess_images([image_file], IMAGE_SIZE)
    expected = hf.generate(input_ids=torch.tensor([ids]), pixel_values=pixel_values, max_new_tokens=6,
                           do_sample=False)[0, len(ids):]
    assert out == tokenizer.decode(expected.tolist()) + "\n"
    assert "vision" in err and "prefill" in err and "decode 5 tokens" in err and "tokens/s" in err


def test_ask_with_sampling_and_steerlm_options_streams_an_answer(model_dir, image_file, capsys):
    _, _, directory = model_dir
    status = main(["ask", "--model", str(directory), "--image", str(image_file), "--image", str(image_file),
                   "Describe both", "--max-new-tokens", "4", "--temperature", "0.8", "--top-k", "7", "--top-p",
                   "0.9", "--seed", "1", "--stop", "w50", "--stream", "--steerlm", "--humor", "3", "--dtype",
                   "float32", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.endswith("\n") and "tokens/s" in err


def test_steerlm_attributes_from_the_command_line():
    ask = (lambda *extra: _parser().parse_args(["ask", "--model", "m", "--image", "i", "q", *extra]))
    assert _steerlm(ask()) is None
    assert _steerlm(ask("--steerlm")) == SteerLMAttributes()
    assert _steerlm(ask("--humor", "3", "--not-appropriate", "1")) == SteerLMAttributes(humor=3, not_appropriate=1)


def test_cuda_graphs_follow_the_engine_default_unless_turned_on_or_off():
    ask = (lambda *extra: _parser().parse_args(["ask", "--image", "i", "q", *extra]))
    assert ask().cuda_graph is None  # Engine's default: graphs on CUDA devices, eager elsewhere
    assert ask("--no-cuda-graph").cuda_graph is False
    assert ask("--cuda-graph").cuda_graph is True


def test_ask_on_a_checkpoint_with_wrong_shapes_names_the_tensor(model_dir, image_file, tmp_path, capsys):
    _, _, directory = model_dir
    broken = shutil.copytree(directory, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["vision_config"]["intermediate_size"] += 2
    (broken / "config.json").write_text(json.dumps(config))
    status = main(["ask", "--model", str(broken), "--image", str(image_file), "What", "--device", "cpu"])
    _, err = capsys.readouterr()
    assert status == 1
    assert "neva: error: tensor 'vision_tower.encoder.layers.0.mlp.fc1.bias' has shape [40]" in err


def test_ask_without_model_uses_the_shipped_default(image_file, capsys):
    from neva_model.cli import DEFAULT_MODEL
    assert (DEFAULT_MODEL / "config.json").is_file() and (DEFAULT_MODEL / "tokenizer.json").is_file()
    assert main(["ask", "--image", str(image_file), "--max-new-tokens", "4", "How many shapes are there?"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "decode" in err


def test_max_new_tokens_past_the_context_stops_at_the_context(image_file, capsys):
    """The shipped model's context is 512 tokens: asking for more new tokens than fit is not an error."""
    assert main(["ask", "--image", str(image_file), "--max-new-tokens", "100000", "Describe the image."]) == 0
    assert capsys.readouterr().out.strip()


def test_streamed_answer_is_the_answer_and_never_prints_the_stop_string(capsys):
    """scene-3's caption is "a yellow triangle, a purple circle and an orange circle"; stop inside "purple circle"."""
    from neva_model.cli import DEFAULT_MODEL
    image = str(DEFAULT_MODEL.parent.parent / "examples" / "scene-3.png")
    ask = ["ask", "--image", image, "Describe the image.", "--stop", "purple c"]
    assert main(ask) == 0
    whole = capsys.readouterr().out
    assert main([*ask, "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert streamed == whole == "a yellow triangle, a \n"
