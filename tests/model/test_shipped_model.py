"""The shipped default model (neva_model/checkpoints/neva-shapes): held-out accuracy per question type, the same
answers as transformers' LLaVA, batched generation equal to one by one, the bundled examples and `neva ask`."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

import neva_kernels
from neva_model import cli
from neva_model.generate import Engine, Request
from neva_model.image import preprocess_images
from neva_model.sampling import SamplingParams
from neva_model.tokenizer import load_tokenizer
from neva_model.train import DEFAULT_CHECKPOINT, DEFAULT_EXAMPLES
from neva_model.train.bundled_examples import write_examples
from neva_model.train.evaluate import MAX_ANSWER_TOKENS, Asked, accuracy_by_type, answer, questions_of, score
from neva_model.train.pool import ScenePool
from neva_model.train.scenes import QUESTION_TYPES
from neva_model.train.sequences import prompt_ids
from neva_model.weights import load_neva

pytestmark = pytest.mark.usefixtures("single_thread")

HELD_OUT_SEED = 20261126  # training draws from seeds 1..5 (seed 0) and evaluates on 1_000_000: this is new
TARGET = 0.95  # the accuracy per question type the model should reach
TRITON_SAMPLE_SCENES = 20  # about 140 questions: the interpreter is slow
REGRESSION_MARGIN = 0.05  # sampling error of 500 scenes is about 2 points: more than 5 is a change of the model


@pytest.fixture(scope="module")
def shipped():
    return load_neva(DEFAULT_CHECKPOINT), load_tokenizer(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def report():
    return json.loads((DEFAULT_CHECKPOINT / "training_report.json").read_text())


@pytest.fixture(scope="module")
def held_out_accuracy(shipped):
    """Accuracy per question type on 500 fresh scenes, torch backend, batched through the engine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the single_thread fixture, which a module-scoped fixture cannot use
    neva_kernels.set_backend("torch")
    try:
        return accuracy_by_type(*shipped, ScenePool.generate(500, HELD_OUT_SEED))
    finally:
        neva_kernels.set_backend(None)
        torch.set_num_threads(threads)


@pytest.fixture
def backend(request):
    neva_kernels.set_backend(request.param)
    yield request.param
    neva_kernels.set_backend(None)


def _below_target(accuracy: dict) -> dict[str, float]:
    """The question types of a score() result whose accuracy is below TARGET."""
    return {kind: result["accuracy"] for kind, result in accuracy.items() if result["accuracy"] < TARGET}


def _mixed_questions(pool: ScenePool, rng: random.Random) -> list[tuple[Asked, str]]:
    """One question of a random type per scene, with its true answer."""
    pixels = [p[i:i + 1] for p in pool.picture_chunks() for i in range(len(p))]
    picked = [rng.choice(qas) for qas in pool.qas]
    return [(Asked(qa.question, picture), qa.answer) for qa, picture in zip(picked, pixels)]


def test_checkpoint_is_complete_small_and_reports_its_training(report):
    files = {p.name: p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "training_report.json"):
        assert name in files
    assert sum(files.values()) <= 20 * 2**20
    assert report["command"] == f"python -m neva_model.train --seed {report['seed']}" and report["scale"] == 1
    assert set(report["accuracy"]) == set(QUESTION_TYPES)
    assert all(r["total"] >= 400 and r["correct"] == round(r["accuracy"] * r["total"])
               for r in report["accuracy"].values())


def test_held_out_accuracy_is_what_training_reported(held_out_accuracy, report):
    """Fresh scenes of another seed: no question type more than the margin below the report (no regression)."""
    assert set(held_out_accuracy) == set(QUESTION_TYPES)
    low = {kind: (result["accuracy"], report["accuracy"][kind]["accuracy"])
           for kind, result in held_out_accuracy.items()
           if result["accuracy"] < report["accuracy"][kind]["accuracy"] - REGRESSION_MARGIN}
    assert not low, f"(held-out, reported) accuracy: {low}"


def test_held_out_accuracy_reaches_the_target(held_out_accuracy):
    low = _below_target(held_out_accuracy)
    assert not low, f"below {TARGET:.0%}: {low}"


@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_triton_kernels_reach_the_target_and_answer_like_the_torch_ones(shipped, backend):
    """Every op on the Triton backend (the CPU interpreter here, float32), on a smaller held-out sample: the target
    accuracy per question type, and token for token the torch backend's answers."""
    model, tokenizer = shipped
    asked, qas = questions_of(ScenePool.generate(TRITON_SAMPLE_SCENES, HELD_OUT_SEED + 1))
    try:  # one batch: the interpreter's cost is per kernel launch, so the fewer engine steps the better
        completions = answer(model, tokenizer, asked, batch_size=len(asked))
    except neva_kernels.BackendUnavailableError as error:
        pytest.skip(f"the Triton backend cannot run the model here: {error}")
    low = _below_target(score(qas, completions))
    assert not low, f"triton, {TRITON_SAMPLE_SCENES} scenes, below {TARGET:.0%}: {low}"
    neva_kernels.set_backend("torch")
    expected = answer(model, tokenizer, asked, batch_size=len(asked))
    assert [c.token_ids for c in completions] == [c.token_ids for c in expected]


def test_transformers_llava_gives_the_same_greedy_answers(shipped):
    transformers = pytest.importorskip("transformers")
    model, tokenizer = shipped
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(DEFAULT_CHECKPOINT).eval()
    questions = _mixed_questions(ScenePool.generate(50, HELD_OUT_SEED + 2), random.Random(2))
    completions = answer(model, tokenizer, [asked for asked, _ in questions])
    tokens = model.config.image_tokens_per_image
    for (asked, _), completion in zip(questions, completions):
        ids = prompt_ids(tokenizer, asked.question, tokens)
        output = hf.generate(input_ids=torch.tensor([ids]), pixel_values=asked.pixels, do_sample=False,
                             max_new_tokens=MAX_ANSWER_TOKENS, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id)[0, len(ids):].tolist()
        if tokenizer.eos_token_id in output:
            output = output[:output.index(tokenizer.eos_token_id)]
        assert completion.token_ids == output, asked.question
    assert sum(len(c.token_ids) for c in completions) >= len(questions)  # every answer has a token at least


def test_a_batch_of_32_mixed_questions_answers_as_one_by_one(shipped):
    model, tokenizer = shipped
    questions = _mixed_questions(ScenePool.generate(32, HELD_OUT_SEED + 3), random.Random(3))
    tokens = model.config.image_tokens_per_image
    requests = [Request(prompt_ids(tokenizer, asked.question, tokens), asked.pixels,
                        SamplingParams(max_new_tokens=MAX_ANSWER_TOKENS)) for asked, _ in questions]
    engine = Engine(model, max_batch_size=32, max_seq_len=model.config.text.max_position_embeddings,
                    detokenize=tokenizer.decode)
    together = engine.generate(requests)
    assert len({asked.question for asked, _ in questions}) > 4  # mixed
    for request, completion in zip(requests, together):
        alone = engine.generate([request])[0]
        assert (alone.token_ids, alone.text, alone.finish_reason) == \
            (completion.token_ids, completion.text, completion.finish_reason)
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_bundled_examples_are_what_training_writes(tmp_path):
    """Small PNGs and their questions with true answers, exactly as `python -m neva_model.train` writes them."""
    report = json.loads((DEFAULT_CHECKPOINT / "training_report.json").read_text())
    write_examples(tmp_path, report["seed"])
    shipped_files = sorted(p.name for p in DEFAULT_EXAMPLES.iterdir())
    assert shipped_files == sorted(p.name for p in tmp_path.iterdir())
    for name in shipped_files:
        assert (DEFAULT_EXAMPLES / name).read_bytes() == (tmp_path / name).read_bytes(), name
    catalogue = json.loads((DEFAULT_EXAMPLES / "questions.json").read_text())
    assert 3 <= len(catalogue) <= 4
    assert all((DEFAULT_EXAMPLES / name).stat().st_size <= 8 * 1024 for name in catalogue)


def test_neva_ask_answers_about_a_bundled_example_as_the_engine_does(shipped, capsys):
    model, tokenizer = shipped
    catalogue = json.loads((DEFAULT_EXAMPLES / "questions.json").read_text())
    name, items = next(iter(catalogue.items()))
    path, question = DEFAULT_EXAMPLES / name, items[-1]["question"]
    status = cli.main(["ask", "--model", str(DEFAULT_CHECKPOINT), "--image", str(path), question])
    out, err = capsys.readouterr()
    expected = answer(model, tokenizer, [Asked(question, preprocess_images(path, model.config.vision.image_size))])
    assert status == 0 and out.strip() == expected[0].text
    assert "decode" in err  # the timing line


def test_neva_ask_answers_about_any_image_file(tmp_path, capsys):
    """A non-square JPEG of noise and a question with unknown words: still a short answer, no error."""
    noise = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "any.jpg")
    status = cli.main(["ask", "--model", str(DEFAULT_CHECKPOINT), "--image", str(tmp_path / "any.jpg"),
                       "What is the weather like?"])
    out, _ = capsys.readouterr()
    assert status == 0 and 0 < len(out.strip().split()) <= MAX_ANSWER_TOKENS
