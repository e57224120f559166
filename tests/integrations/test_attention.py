"""The "neva" attention implementation: padding masks unpadded exactly, patterns it cannot express refused, and
`attn_implementation="neva"` from `from_pretrained` on checkpoints saved here."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

import neva_kernels as nk
from neva_kernels.integrations import hf_attention
from neva_kernels.integrations.transformers import ATTENTION
from tests.helpers import assert_close_by_rule
from tests.integrations.hf_models import assert_logits_by_rule, build, prompts


def module(causal: bool) -> nn.Module:
    m = nn.Module()
    m.is_causal = causal
    return m


def sdpa(q, k, v, key_valid, causal):
    """SDPA over [B, H, S, D] with the equivalent 4D boolean mask (queries are the last Sq key positions)."""
    seqlen_q, seqlen_k = q.shape[2], k.shape[2]
    visible = key_valid[:, None, None, :].expand(-1, 1, seqlen_q, -1)
    if causal:
        visible = visible & torch.ones(seqlen_q, seqlen_k, dtype=torch.bool).tril(seqlen_k - seqlen_q)
    return F.scaled_dot_product_attention(q, k, v, visible, scale=1 / math.sqrt(q.shape[-1]),
                                          enable_gqa=True).transpose(1, 2)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seqlen_q, seqlen_k, heads, kv_heads, head_dim", [
    (9, 9, 4, 4, 16), (1, 13, 6, 2, 80), (5, 12, 8, 1, 24)])  # prefill, cached decode, a chunk after a cache
def test_padding_masks_with_holes_match_sdpa_by_rule(causal, seqlen_q, seqlen_k, heads, kv_heads, head_dim,
                                                     cpu_backend):
    batch = 3
    q = torch.randn(batch, heads, seqlen_q, head_dim)
    k, v = torch.randn(2, batch, kv_heads, seqlen_k, head_dim)
    key_valid = torch.rand(batch, seqlen_k) < 0.7  # left padding, holes, anything
    key_valid[:, -1] = True
    key_valid[0, :-seqlen_q] = False  # one row that is all padding but its queries
    out, weights = hf_attention.attention_forward(module(causal), q, k, v, key_valid)
    assert weights is None
    query_valid = key_valid[:, seqlen_k - seqlen_q:]
    assert not out[~query_valid].any(), "padding query rows must be zeros"
    truth = sdpa(q.double(), k.double(), v.double(), key_valid, causal)
    assert_close_by_rule(out[query_valid], truth[query_valid], sdpa(q, k, v, key_valid, causal)[query_valid],
                         "unpadded attention")


def test_refuses_what_it_cannot_compute(cpu_backend):
    q, k, v = torch.randn(3, 1, 2, 5, 16)
    with pytest.raises(nk.NevaValueError, match="'dropout' must be 0"):
        hf_attention.attention_forward(module(True), q, k, v, None, dropout=0.1)
    with pytest.raises(nk.NevaValueError, match="'softcap' must be None"):
        hf_attention.attention_forward(module(True), q, k, v, None, softcap=30.0)
    with pytest.raises(nk.NevaValueError, match="2D .batch, keys. padding mask.*shape \\[1, 1, 5, 5\\]"):
        hf_attention.attention_forward(module(True), q, k, v, torch.ones(1, 1, 5, 5, dtype=torch.bool))


def test_sliding_window_that_cuts_into_the_keys_is_refused(cpu_backend):
    model = build("mistral-mqa-window48")
    model.set_attn_implementation(ATTENTION)
    model.config.sliding_window = 4
    with pytest.raises(nk.NevaValueError, match="sliding window of 4 tokens that cuts into the 8 keys"):
        model(**prompts(model, [8]))
    model.config.sliding_window = 8  # as wide as the prompt: the window hides nothing, so it runs
    model(**prompts(model, [8]))


@pytest.mark.parametrize("name", ["llama-gqa3-headdim24-linear-rope", "llava"])
def test_from_pretrained_with_attn_implementation_neva(name, tmp_path, cpu_backend):
    stock = build(name)
    stock.save_pretrained(tmp_path)
    loader = LlavaForConditionalGeneration if name == "llava" else AutoModelForCausalLM
    model = loader.from_pretrained(tmp_path, attn_implementation=ATTENTION).eval()
    configs = [model.config, *(getattr(model.config, key) for key in model.config.sub_configs)]
    assert {c._attn_implementation for c in configs} == {ATTENTION}
    assert_logits_by_rule(stock, model, prompts(stock, [4, 9]), f"{name} from_pretrained")


def test_set_attn_implementation_neva_on_a_loaded_model(cpu_backend):
    stock = build("qwen2-gqa2-bias")
    model = copy.deepcopy(stock)
    model.set_attn_implementation(ATTENTION)
    assert_logits_by_rule(stock, model, prompts(stock, [3, 10]), "set_attn_implementation('neva')")
