"""`neva plan`: per-GPU weights under tensor parallelism, checked against sizing's whole-model numbers and against
the shapes written out by hand; the KV cache left beside them; every bad argument as one line."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from neva_model.cli import main
from neva_model.config import PRESETS, NevaConfig, TextConfig, from_hf_config
from neva_model.plan import GIB, HeadSplit, format_plan, plan_gpus, split_heads, weight_shares
from neva_model.sizing import meta_model, parameter_count, size_report
from neva_model.train.export import hf_config

from tests.model.cli_checks import fails as _fails

TINY = PRESETS["tiny"]  # 4 query heads, 2 KV heads of 16, FFN 160, vocabulary 512, 2 layers
CONFIGS = {
    "llama": TINY,
    "llama-biases-tied": replace(TINY, text=replace(TINY.text, attention_bias=True, mlp_bias=True),
                                 tie_word_embeddings=True),
    "nemotron": replace(TINY, text=TextConfig(
        family="nemotron", vocab_size=512, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=8,
        num_kv_heads=2, head_dim=24, hidden_act="relu2", partial_rotary_factor=0.5, attention_bias=True,
        mlp_bias=True, max_position_embeddings=512)),
}


def by_hand(config: NevaConfig, gpus: int, kv_heads: int) -> tuple[int, int, int]:
    """(decoder, vocab, replicated) elements on one GPU, from the layer shapes written out."""
    text, hidden = config.text, config.text.hidden_size
    q, kv = text.num_heads // gpus * text.head_dim, kv_heads * text.head_dim
    ffn, mlp_inputs = text.intermediate_size // gpus, 2 if text.family == "llama" else 1  # gate and up / up
    attention = hidden * (q + 2 * kv) + text.attention_bias * (q + 2 * kv) + q * hidden
    mlp = mlp_inputs * ffn * (hidden + text.mlp_bias) + ffn * hidden
    norms = (2 * text.num_layers + 1) * hidden * (2 if text.family == "nemotron" else 1)  # LayerNorm: + bias
    row_parallel_biases = text.num_layers * hidden * (text.attention_bias + text.mlp_bias)
    model = meta_model(config)
    vision = sum(p.numel() for m in (model.vision_tower, model.multi_modal_projector) for p in m.parameters())
    vocab = math.ceil(text.vocab_size / gpus) * hidden * (1 if config.tie_word_embeddings else 2)
    return text.num_layers * (attention + mlp), vocab, vision + norms + row_parallel_biases


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_gpu_holds_what_sizing_counts(name):
    config = CONFIGS[name]
    (plan,) = plan_gpus(config, [1], memory=2**40)
    assert plan.weights.total == 2 * parameter_count(config)
    assert plan.kv_bytes_per_token == size_report(config).kv_bytes_per_token["bf16"]
    assert (plan.weights.decoder // 2, plan.weights.vocab // 2, plan.weights.replicated // 2) == \
        by_hand(config, 1, config.text.num_kv_heads)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gpus_together_hold_the_model_once_and_the_replicated_part_on_each(name):
    config = CONFIGS[name]
    gpus = 2  # divides every size above: no padding, no KV head held twice
    shares = weight_shares(meta_model(config), split_heads(config.text, gpus))
    assert gpus * shares.total == parameter_count(config) + (gpus - 1) * shares.replicated
    assert (shares.decoder, shares.vocab, shares.replicated) == by_hand(config, gpus, config.text.num_kv_heads // 2)


def test_fewer_kv_heads_than_gpus_replicates_one_per_gpu():
    config = CONFIGS["nemotron"]  # 8 query heads, 2 KV heads
    assert split_heads(config.text, 8) == HeadSplit(gpus=8, heads=1, kv_heads=1)
    (two, eight) = plan_gpus(config, [2, 8], memory=2**40)
    assert eight.split.kv_heads == 1 and eight.kv_bytes_per_token == two.kv_bytes_per_token  # 1 KV head each
    assert eight.weights.decoder == 2 * by_hand(config, 8, kv_heads=1)[0]  # bf16: 2 bytes
    # Each of the 2 KV heads is on 4 GPUs, 3 copies more than once: K and V rows (weight and bias) of each layer.
    text = config.text
    extra = 2 * 3 * 2 * text.head_dim * (text.hidden_size + 1) * text.num_layers
    assert 8 * eight.weights.decoder // 2 == by_hand(config, 1, text.num_kv_heads)[0] + extra


def test_vocabulary_that_gpus_do_not_divide_is_padded_on_each():
    config = replace(TINY, text=replace(TINY.text, vocab_size=513))
    (plan,) = plan_gpus(config, [4], memory=2**40, dtype="fp16")
    assert plan.weights.vocab == 2 * 2 * 129 * 64  # embedding and lm_head, ceil(513 / 4) rows of 64, 2 bytes


def test_gpu_counts_that_do_not_split_the_heads_are_refused():
    text = replace(TINY.text, num_heads=12, num_kv_heads=4, head_dim=16)
    with pytest.raises(ValueError, match=r"dividing the model's 12 query heads \(1, 2, 3, 4, 6, 12\), got 5"):
        split_heads(text, 5)
    with pytest.raises(ValueError, match="divides the model's 4 KV heads or is a multiple of them, got 6"):
        split_heads(text, 6)  # 12 query heads split, but 6 GPUs cannot share 4 KV heads evenly
    assert split_heads(text, 12) == HeadSplit(12, 1, 1) and split_heads(text, 2) == HeadSplit(2, 6, 2)


def test_fits_exactly_when_one_sequence_of_cache_is_left():
    config, block, seq = CONFIGS["llama"], 16, 40  # 40 tokens take 3 blocks: 48 cache tokens
    (probe,) = plan_gpus(config, [2], memory=2**40, reserve=0.0, block_size=block, max_seq_len=seq)
    weights, per_token = probe.weights.total, probe.kv_bytes_per_token
    (exact,) = plan_gpus(config, [2], weights + 48 * per_token, reserve=0.0, block_size=block, max_seq_len=seq)
    assert exact.fits and exact.kv_tokens == 48 and exact.sequences == 1 and exact.needed == exact.memory
    (short,) = plan_gpus(config, [2], weights + 48 * per_token - 1, reserve=0.0, block_size=block, max_seq_len=seq)
    assert not short.fits and short.kv_tokens == 32 and short.sequences == 0 and short.needed - short.memory == 1
    (small,) = plan_gpus(config, [2], weights // 2, reserve=0.0, block_size=block, max_seq_len=seq)
    assert not small.fits and small.kv_tokens == 0 and small.kv_cache == 0
    memory = 4 * 10**6
    (reserved,) = plan_gpus(config, [2], memory, kv_dtype="fp8", reserve=0.25, block_size=block)
    assert reserved.reserve == 10**6 and reserved.kv_bytes_per_token == per_token // 2
    assert reserved.kv_tokens == (memory - 10**6 - weights) // (per_token // 2 * block) * block


def test_library_arguments_are_checked():
    for kwargs, message in [(dict(dtype="fp8"), "'dtype' must be one of bf16, fp16, got 'fp8'"),
                            (dict(kv_dtype="int4"), "'kv_dtype' must be one of bf16, fp16, fp8, got 'int4'"),
                            (dict(reserve=1.0), r"'reserve' must be a fraction in \[0, 1\), got 1.0"),
                            (dict(max_seq_len=1025), r"'max_seq_len' must be in \[1, the model's context of 1024\]")]:
        with pytest.raises(ValueError, match=message):
            plan_gpus(TINY, [1], 2**30, **kwargs)


# ---- the command ---------------------------------------------------------------------------------------------

PLAN = ["plan", "--model", "tiny", "--gpus", "2", "--gpu-memory", "1GB"]


def test_command_prints_one_row_per_gpu_count_with_the_defaults(capsys):
    assert main(["plan", "--model", "tiny", "--gpus", "1", "2", "4", "--gpu-memory", "0.5GiB"]) == 0
    out, err = capsys.readouterr()
    plans = plan_gpus(TINY, [1, 2, 4], 2**29, "bf16", "bf16", reserve=0.1, block_size=16, max_seq_len=1024)
    assert err == "" and out == format_plan("tiny", plans, "bf16", "bf16", 0.1) + "\n"
    assert "| 4 | 1 / 1 |" in out and out.count("| yes |") == 3


def test_the_43b_class_preset_needs_two_80gb_gpus(capsys):
    assert main(["plan", "--model", "neva-43b-class-nemotron", "--gpus", "1", "2", "--gpu-memory", "80GB"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |") or
            line.startswith("| 2 |")]
    report = size_report(NevaConfig.from_name("neva-43b-class-nemotron"))
    short = 2 * report.parameters + 8e9 + 4096 * report.kv_bytes_per_token["bf16"] - 80e9
    assert rows[0].endswith(f"| does not fit: {short / GIB:.2f} GiB short |") and rows[1].endswith("| yes |")


def test_a_checkpoint_directory_is_planned_from_its_config_json(tmp_path, capsys):
    config = CONFIGS["nemotron"]
    (tmp_path / "config.json").write_text(json.dumps(hf_config(config, bos_token_id=1, pad_token_id=0)))
    assert from_hf_config(tmp_path) == config
    assert main(["plan", "--model", str(tmp_path), "--gpus", "8", "--gpu-memory", "2MiB", "--kv-dtype", "fp8",
                 "--reserve", "0", "--block-size", "4", "--max-seq-len", "100"]) == 0
    plans = plan_gpus(config, [8], 2**21, "bf16", "fp8", reserve=0.0, block_size=4, max_seq_len=100)
    assert capsys.readouterr().out == format_plan(str(tmp_path), plans, "bf16", "fp8", 0.0) + "\n"


@pytest.mark.parametrize("extra, message", [
    (["--gpus", "0"], "argument --gpus: expected an int >= 1, got 0"),
    (["--gpus", "two"], "argument --gpus: expected an int >= 1, got 'two'"),
    (["--gpus", "3"], "argument --gpus: expected a GPU count dividing the model's 4 query heads (1, 2, 4), got 3"),
    (["--gpus", "2", "8"], "argument --gpus: expected a GPU count dividing the model's 4 query heads (1, 2, 4), got 8"),
    (["--gpu-memory", "eighty"], "argument --gpu-memory: expected a size such as 80GB or 80GiB (units: B, KB, MB, "
                                 "GB, TB, KiB, MiB, GiB, TiB), got 'eighty'"),
    (["--gpu-memory", "80"], "argument --gpu-memory: expected a size such as 80GB or 80GiB"),
    (["--gpu-memory", "80XB"], "got '80XB'"),
    (["--gpu-memory", "1e3GB"], "got '1e3GB'"),
    (["--gpu-memory", "nanGB"], "got 'nanGB'"),
    (["--gpu-memory", "9" * 400 + "GB"], "argument --gpu-memory: expected a size such as 80GB"),
    (["--gpu-memory=-80GB"], "got '-80GB'"),
    (["--gpu-memory", "0GB"], "argument --gpu-memory: expected a positive size, got '0GB'"),
    (["--gpu-memory", "0.5B"], "argument --gpu-memory: expected a positive size, got '0.5B'"),
    (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["--kv-dtype", "int4"], "argument --kv-dtype: invalid choice: 'int4'"),
    (["--reserve", "1"], "argument --reserve: expected a fraction in [0, 1), got '1'"),
    (["--reserve", "-0.1"], "argument --reserve: expected a fraction in [0, 1), got '-0.1'"),
    (["--reserve", "nan"], "argument --reserve: expected a finite number, got 'nan'"),
    (["--block-size", "0"], "argument --block-size: expected an int >= 1, got 0"),
    (["--max-seq-len", "1025"], "argument --max-seq-len: expected at most the model's context of 1024 tokens, "
                                "got 1025"),
    (["--model", "no-such-model"], "argument --model: expected a preset (tiny, llava-1.5-7b, "),
])
def test_malformed_arguments_are_one_line_and_exit_2(capsys, extra, message):
    _fails(PLAN + extra, capsys, 2, message)


def test_kv_heads_that_gpus_cannot_share_are_refused(capsys):
    _fails(["plan", "--model", "neva-22b-class-nemotron", "--gpus", "6", "--gpu-memory", "80GB"], capsys, 2,
           "argument --gpus: expected a GPU count that divides the model's 8 KV heads or is a multiple of them, got 6")


def test_missing_arguments_are_one_line(capsys):
    _fails(["plan", "--model", "tiny"], capsys, 2, "the following arguments are required: --gpus, --gpu-memory")


def test_a_directory_without_a_readable_config_is_named(tmp_path, capsys):
    _fails([*PLAN, "--model", str(tmp_path)], capsys, 1, f"no config.json at {tmp_path / 'config.json'}")
    (tmp_path / "config.json").write_text("{not json")
    _fails([*PLAN, "--model", str(tmp_path)], capsys, 1, f"cannot read {tmp_path / 'config.json'}")
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_attention_heads": 0}}))
    _fails([*PLAN, "--model", str(tmp_path)], capsys, 1, "num_attention_heads")


def test_a_parameter_without_a_split_rule_is_an_error_not_a_guess():
    model = meta_model(TINY)
    model.language_model.layers[1].adapter = torch.nn.Linear(4, 4, device="meta")
    with pytest.raises(ValueError, match="no tensor-parallel rule for parameter 'language_model.layers.1.adapter.w"):
        weight_shares(model, split_heads(TINY.text, 2))


def test_the_readme_table_is_what_the_command_prints(capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = [line for line in readme.splitlines() if line.startswith("| neva-")]
    printed = []
    for preset in ("neva-8b-nemotron", "neva-22b-class-nemotron", "neva-43b-class-nemotron"):
        argv = ["plan", "--model", preset, "--gpus", "1", "2", "4", "--gpu-memory", "80GB", "--dtype", "bf16"]
        assert main(argv) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if line[:3] in ("| 1", "| 2", "| 4")]
        printed += [f"| {preset} {row}" for row in rows]
    assert len(documented) == 9 and documented == printed
