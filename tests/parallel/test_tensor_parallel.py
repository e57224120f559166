"""Tensor parallelism on CPU with gloo, 2 and 4 processes under torchrun: the same logits as one process (by the
tolerance rule: the error against transformers in float64 at most twice one process's, plus a small floor), the
same greedy tokens for a batch of requests of different lengths, rank 0's sampled token on every rank, each rank's
cache holding only its K/V heads; the shipped model's answers to the bundled questions; `neva ask` under torchrun."""
from __future__ import annotations

import json

import pytest
import torch

from neva_model import Engine, Request, SamplingParams, load_neva
from neva_model.cli import DEFAULT_MODEL
from neva_model.image import preprocess_images
from neva_model.tokenizer import load_tokenizer
from neva_model.train import DEFAULT_EXAMPLES
from neva_model.train.evaluate import Asked, answer

from tests.model.tiny_llava import IMAGE_SIZE, TinyLlava, build_hf_model, random_prompt, write_checkpoint
from tests.parallel.conftest import run_ok

FLOOR = 1e-6  # the rule's small floor (one process's float32 logits here are 2e-6 to 1e-5 off float64)

# vocab 95 does not divide 2 or 4 (the last rank's rows are padding); image token 94 is inside the vocabulary.
_TP = dict(vocab=95, image_token_index=94)
CASES = [
    # 8 query / 4 K/V heads: K/V heads split over 2 and 4 ranks; biases (row-parallel: added once); tied embeddings
    TinyLlava("tp-llama-gqa2-biases-tied", heads=8, kv_heads=4, hidden=64, biases=True, tie_embeddings=True, **_TP),
    # one K/V head, fewer than the ranks: every rank keeps it
    TinyLlava("tp-llama-mqa", heads=4, kv_heads=1, **_TP),
    # Nemotron (LayerNorm1P, squared ReLU, half rotary, biases): 2 K/V heads, split over 2, replicated over 4
    TinyLlava("tp-nemotron-gqa2-headdim12", family="nemotron", partial_rotary_factor=0.5, heads=4, kv_heads=2,
              head_dim=12, biases=True, **_TP),
]
GREEDY_LENGTHS = (2, 9, 5)
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def parity_inputs(tmp_path_factory):
    """The checkpoints, and the inputs every run gets (OUT/inputs.pt): a logits batch and the engine's requests."""
    out = tmp_path_factory.mktemp("tp-parity")
    checkpoints = {}
    for case in CASES:
        write_checkpoint(case, out / case.name)
        checkpoints[case.name] = case
    generator = torch.Generator().manual_seed(0)
    case = CASES[0]  # all cases share the vocabulary, image token and image size
    input_ids = torch.tensor([random_prompt(case, 6, image_at=1, generator=generator),
                              random_prompt(case, 6, image_at=4, generator=generator)])
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    requests = [(random_prompt(case, n, image_at=n // 2, generator=generator),
                 torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                 {"max_new_tokens": NEW_TOKENS}) for n in GREEDY_LENGTHS]
    requests.append((random_prompt(case, 4, image_at=0, generator=generator),
                     torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                     {"max_new_tokens": NEW_TOKENS, "temperature": 1.0}))  # unseeded
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "requests": requests}
    torch.save(inputs, out / "inputs.pt")
    return out, checkpoints, inputs


def _single_process(case: TinyLlava, directory, inputs) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """(transformers' float64 logits, one process's float32 logits, one process's greedy answers)."""
    hf = build_hf_model(case, torch.float64)
    model = load_neva(directory)
    with torch.no_grad():
        reference = hf(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].double()).logits
        logits = model.forward_expanded(inputs["input_ids"], inputs["pixel_values"])
    greedy = [Request(ids, pixels, SamplingParams(**sampling)) for ids, pixels, sampling in inputs["requests"]
              if "temperature" not in sampling]
    engine = Engine(model, max_batch_size=len(greedy), max_seq_len=64, block_size=4)
    return reference, logits, [completion.token_ids for completion in engine.generate(greedy)]


@pytest.mark.parametrize("processes", [2, 4])
def test_sharded_decoder_computes_what_one_process_does(parity_inputs, processes):
    out, cases, inputs = parity_inputs
    for stale in out.glob("rank*.pt"):
        stale.unlink()
    run_ok(processes, "-m", "tests.parallel.tp_worker", "parity", str(out), *(str(out / name) for name in cases))
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(processes)]
    for name, case in cases.items():
        reference, single, single_answers = _single_process(case, out / name, inputs)
        results = [rank[str(out / name)] for rank in ranks]
        tp_error = (results[0]["logits"].double() - reference).abs().max().item()
        single_error = (single.double() - reference).abs().max().item()
        assert tp_error <= 2 * single_error + FLOOR, (name, tp_error, single_error)
        for r, result in enumerate(results):
            assert torch.equal(result["logits"], results[0]["logits"]), (name, r)  # the gathered logits agree
            assert result["answers"] == results[0]["answers"], (name, r)  # sampled one included
            assert result["cache_kv_heads"] == max(1, case.kv_heads // processes), (name, r)
        *greedy, sampled = results[0]["answers"]
        assert greedy == single_answers, name
        assert all(len(tokens) == NEW_TOKENS for tokens in single_answers) and len(sampled) == NEW_TOKENS


def _bundled_questions() -> list[tuple[str, str]]:
    catalogue = json.loads((DEFAULT_EXAMPLES / "questions.json").read_text())
    return [(name, item["question"]) for name, items in catalogue.items() for item in items]


def test_shipped_model_answers_the_bundled_questions_alike_on_two_processes(tmp_path):
    model, tokenizer = load_neva(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    size = model.config.vision.image_size
    expected = [c.text for c in answer(model, tokenizer, [Asked(question, preprocess_images(DEFAULT_EXAMPLES / name,
                                                                                            size))
                                                          for name, question in _bundled_questions()])]
    run_ok(2, "-m", "tests.parallel.tp_worker", "shipped", str(tmp_path))
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected
    assert len(expected) == len(_bundled_questions()) > 20


def test_neva_ask_under_torchrun_prints_the_answer_once(tmp_path):
    name, question = _bundled_questions()[-1]
    image = str(DEFAULT_EXAMPLES / name)
    result = run_ok(2, "-m", "neva_model.cli", "ask", "--image", image, question)
    model, tokenizer = load_neva(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    expected = answer(model, tokenizer, [Asked(question, preprocess_images(image, model.config.vision.image_size))])
    assert result.stdout == expected[0].text + "\n"  # rank 0's answer, printed by rank 0 alone
    assert result.stderr.count("tokens/s") == 1  # one timing line


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_nccl_on_two_gpus_answers_the_bundled_questions_as_one_process(tmp_path):
    model, tokenizer = load_neva(DEFAULT_MODEL, device="cuda"), load_tokenizer(DEFAULT_MODEL)
    size = model.config.vision.image_size
    expected = [c.text for c in answer(model, tokenizer, [Asked(q, preprocess_images(DEFAULT_EXAMPLES / n, size).cuda())
                                                          for n, q in _bundled_questions()])]
    run_ok(2, "-m", "tests.parallel.tp_worker", "shipped", str(tmp_path), env={"NEVA_TP_TEST_DEVICE": "cuda"})
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected
