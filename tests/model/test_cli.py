"""`neva ask` end to end on a tiny checkpoint: image file in, the greedy answer of transformers out."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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

from tests.model.cli_checks import fails as _fails
from tests.model.tiny_llava import IMAGE_SIZE, PARITY_CASES, write_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[2]
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
    assert ask().compile is False and ask("--compile").compile is True


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


# ---- every failure: one line `neva: error: ...`, a non-zero exit, no traceback --------------------------------

def _ask(image_file, *extra):
    return ["ask", "--image", str(image_file), "How many shapes are there?", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--device", "bogus"], "argument --device: expected cpu, cuda or cuda:N, got 'bogus'"),
    (["--device", "meta"], "argument --device: expected cpu, cuda or cuda:N, got 'meta'"),
    (["--device", "mps"], "argument --device: expected cpu, cuda or cuda:N, got 'mps'"),
    (["--block-size", "0"], "argument --block-size: expected an int >= 1, got 0"),
    (["--block-size", "1.5"], "argument --block-size: expected an int >= 1, got '1.5'"),
    (["--max-new-tokens", "-3"], "argument --max-new-tokens: expected an int >= 1, got -3"),
    (["--top-k", "-1"], "argument --top-k: expected an int >= 0, got -1"),
    (["--temperature", "nan"], "argument --temperature: expected a finite number, got 'nan'"),
    (["--top-p", "inf"], "argument --top-p: expected a finite number, got 'inf'"),
    (["--system", "caf\udcc3"], "argument --system: is not valid UTF-8 (byte 0xc3 at character 3)"),
    (["--stop", "\udcff"], "argument --stop: is not valid UTF-8 (byte 0xff at character 0)"),
    (["--backend", "fast"], "argument --backend: invalid choice: 'fast'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_malformed_arguments_are_one_line_and_exit_2(image_file, capsys, extra, message):
    _fails(_ask(image_file, *extra), capsys, 2, message)


def test_a_question_that_is_not_utf8_is_refused(image_file, capsys):
    _fails(["ask", "--image", str(image_file), "what\udcff"], capsys, 2,
           "argument question: is not valid UTF-8 (byte 0xff at character 4)")


def test_missing_arguments_are_one_line(capsys):
    _fails(["ask"], capsys, 2, "the following arguments are required: question, --image")
    _fails([], capsys, 2, "the following arguments are required: command")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(image_file, capsys):
    _fails(_ask(image_file, "--device", "cuda"), capsys, 2, "'cuda' asked for, but torch sees no CUDA GPU here")
    _fails(_ask(image_file, "--device", "cuda:1"), capsys, 2, "'cuda:1' asked for, but torch sees no CUDA GPU")
    _fails(_ask(image_file, "--cuda-graph", "--device", "cpu"), capsys, 1,
           "cuda_graph needs the model on a CUDA device, it is on cpu")
    _fails(_ask(image_file, "--cuda-graph", "--compile", "--device", "cpu"), capsys, 1,
           "compile_decode and cuda_graph exclude each other")


@pytest.mark.parametrize("extra, message", [
    (["--seed", str(2**64)], "SamplingParams: 'seed' must be in [0, 18446744073709551615], got 18446744073709551616"),
    (["--humor", "12"], "SteerLM attribute humor must be in 0..9, got 12"),
    (["--model", "/nonexistent/model"], "the model directory /nonexistent/model does not exist"),
    (["--image", "/nonexistent/photo.png"], "image file '/nonexistent/photo.png' does not exist"),
])
def test_values_the_model_cannot_take_are_one_line_and_exit_1(image_file, capsys, extra, message):
    _fails(_ask(image_file, *extra), capsys, 1, message)


def test_a_block_larger_than_the_context_is_refused_before_allocating(image_file, capsys, monkeypatch):
    """Blocks of 2^50 tokens would ask for petabytes; past the context (512) a block is never filled anyway."""
    _fails(_ask(image_file, "--block-size", str(2**50)), capsys, 2,
           "argument --block-size: expected at most the model's context of 512 tokens, got 1125899906842624")
    # A cache that cannot be allocated all the same is one line too.
    zeros = torch.zeros

    def refuse_pages(*args, **kwargs):  # the cache's 5-D page tensors only
        if args and isinstance(args[0], tuple) and len(args[0]) == 5:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")
        return zeros(*args, **kwargs)
    monkeypatch.setattr(torch, "zeros", refuse_pages)
    _fails(_ask(image_file), capsys, 1, "PagedKVCache: cannot allocate K and V pages of shape [3, ")


def test_model_pointing_at_a_file_is_refused(image_file, capsys):
    _fails(_ask(image_file, "--model", str(image_file)), capsys, 1, "is a file, not a directory")


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(model_dir, image_file, tmp_path, capsys):
    case, _, directory = model_dir
    bigger = shutil.copytree(directory, tmp_path / "bigger")
    tokenizer = Tokenizer.from_file(str(bigger / "tokenizer.json"))
    tokenizer.add_tokens([f"extra{i}" for i in range(case.vocab)])
    tokenizer.save(str(bigger / "tokenizer.json"))
    _fails(_ask(image_file, "--model", str(bigger)), capsys, 1,
           f"has {tokenizer.get_vocab_size()} tokens, more than the model's vocab_size {case.vocab}")


def test_an_invalid_preprocessor_config_is_named(model_dir, image_file, tmp_path, capsys):
    _, _, directory = model_dir
    broken = shutil.copytree(directory, tmp_path / "broken")
    (broken / "preprocessor_config.json").write_text("{\"image_mean\": [0.5, 0.5")
    _fails(_ask(image_file, "--model", str(broken)), capsys, 1, "cannot read " + str(broken / "preprocessor_config"))
    (broken / "preprocessor_config.json").write_text(json.dumps({"image_std": [0.2, 0, 0.2]}))
    _fails(_ask(image_file, "--model", str(broken)), capsys, 1, "preprocessor_config.json: image_std must be positive")


def test_nan_weights_are_an_error_not_an_empty_answer(model_dir, image_file, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    _, _, directory = model_dir
    broken = shutil.copytree(directory, tmp_path / "nan")
    tensors = load_file(broken / "model.safetensors")
    tensors["language_model.lm_head.weight"][0, 0] = float("nan")
    save_file(tensors, broken / "model.safetensors")
    _fails(_ask(image_file, "--model", str(broken), "--device", "cpu"), capsys, 1,
           "sample: the model's logits hold NaN in row(s) [0]")


def test_ctrl_c_is_one_line_and_exit_130(image_file, capsys, monkeypatch):
    """A real SIGINT while the engine runs (Python raises KeyboardInterrupt in the main thread)."""
    from neva_model.generate import Engine

    def interrupted(*args, **kwargs):
        # To this thread, as a terminal's Ctrl-C reaches the foreground one (os.kill may pick another thread of
        # the process, e.g. tqdm's monitor, and then the sleep below is not cut short).
        signal.raise_signal(signal.SIGINT)
        for _ in range(100):
            time.sleep(0.1)  # the signal handler raises long before this ends
    monkeypatch.setattr(Engine, "generate", interrupted)
    # Python's own SIGINT handler, as a fresh `neva` process starts with (an earlier test in this process may have
    # left another one installed); main() must not replace it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(_ask(image_file)) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    out, err = capsys.readouterr()
    assert out == "" and err == "neva: interrupted\n"


def test_an_unexpected_error_is_still_one_line_naming_its_type(image_file, capsys, monkeypatch):
    from neva_model.generate import Engine
    monkeypatch.setattr(Engine, "generate", lambda *args, **kwargs: 1 / 0)
    _fails(_ask(image_file), capsys, 1, "internal error, ZeroDivisionError: division by zero")


def _neva(*argv, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kwargs.pop("env", {})}
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "neva_model.cli", *argv], env=env, stderr=subprocess.PIPE,
                          timeout=300, **kwargs)


@pytest.mark.slow  # a fresh interpreter imports torch
def test_an_invalid_backend_environment_variable_is_one_line():
    result = _neva("ask", "--image", "x.png", "q", env={"NEVA_KERNELS_BACKEND": "fastest"})
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr == b"neva: error: NEVA_KERNELS_BACKEND: backend must be one of cuda, triton, torch, " \
                            b"got 'fastest'\n"


@pytest.mark.slow  # a fresh interpreter imports torch
def test_closed_or_full_stdout_is_an_error_not_a_lost_answer(image_file):
    closed = _neva(*_ask(image_file), stdout=None, preexec_fn=lambda: os.close(1))  # `neva ask ... >&-`
    assert closed.returncode == 1
    assert closed.stderr.decode() == "neva: error: stdout is closed: there is nowhere to write the answer\n"
    with open("/dev/full", "wb") as full:
        for stream in ([], ["--stream"]):
            result = _neva(*_ask(image_file, *stream), stdout=full)
            assert result.returncode == 1
            lines = result.stderr.decode().splitlines()
            assert lines == ["neva: error: cannot write the answer to stdout: No space left on device"], lines


@pytest.mark.slow  # a fresh interpreter imports torch
def test_non_utf8_bytes_from_a_real_command_line_are_refused(image_file):
    result = _neva(os.fsencode("ask"), "--image", str(image_file), b"caf\xe9?")
    assert result.returncode == 2
    assert result.stderr == b"neva: error: argument question: is not valid UTF-8 (byte 0xe9 at character 3)\n"
