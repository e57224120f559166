"""Bad input raises a NevaValueError / NevaTypeError that names the argument, the expectation and what was given."""
import pytest
import torch

import neva_kernels as nk
from tests.kernels.test_contract import small_inputs


def call(op, **changes):
    """Call `op` on the valid small inputs with some of them replaced."""
    i = {**small_inputs(), **changes}
    return {
        "rms_norm": lambda: nk.rms_norm(i["x"], i["weight"], i.get("eps", 1e-6), residual=i.get("res")),
        "layer_norm": lambda: nk.layer_norm(i["x"], i["weight"], i["bias"], i.get("eps", 1e-5), residual=i.get("res"),
                                            zero_centered_weight=i.get("zero_centered", False)),
        "flash": lambda: nk.flash_attention(i["q"], i["k"], i["v"], softmax_scale=i.get("scale")),
        "packed": lambda: nk.flash_attention(i["packed_q"], i["packed_k"], i["packed_v"], False, None,
                                             i["cu_q"], i["cu_k"], i.get("max_q"), None),
        "decode": lambda: nk.paged_decode_attention(i["decode_q"], i["k_cache"], i["v_cache"], i["block_tables"],
                                                    i["seq_lens"]),
        "append": lambda: nk.append_kv_cache(i["new_k"], i["new_v"], i["k_cache"], i["v_cache"], i["slots"]),
        "rotary": lambda: nk.rotary_embedding(i["q"], i["k"][:, :9], i["positions"], i["cos_sin"]),
        "project": lambda: nk.project_image_tokens(i["features"], i["w1"], i["b1"], i["w2"], i["b2"], i["embeds"],
                                                   i["mask"]),
    }[op]()


i = small_inputs()
CASES = [
    # (id, op, replacements, error type, message fragment)
    ("rms_norm int dtype", "rms_norm", dict(x=i["x"].long()), nk.NevaTypeError,
     "'x' must have dtype float16/bfloat16/float32/float64, got torch.int64"),
    ("rms_norm weight size", "rms_norm", dict(weight=i["weight"][:-1]), nk.NevaValueError,
     "'weight' must have shape [769] (the last dimension of x), got [768]"),
    ("rms_norm weight dtype", "rms_norm", dict(weight=i["weight"].half()), nk.NevaTypeError,
     "'weight' must have the dtype of 'x' (torch.float32), got torch.float16"),
    ("rms_norm weight device", "rms_norm", dict(weight=i["weight"].to("meta")), nk.NevaValueError,
     "'weight' must be on the same device as 'x' (cpu), got meta"),
    ("rms_norm residual shape", "rms_norm", dict(res=i["x"][:2]), nk.NevaValueError,
     "'residual' must have shape [3, 769] (the shape of x), got [2, 769]"),
    ("rms_norm negative eps", "rms_norm", dict(eps=-1.0), nk.NevaValueError, "'eps' must be a number >= 0"),
    ("rms_norm not a tensor", "rms_norm", dict(x=[1.0, 2.0]), nk.NevaTypeError, "'x' must be a torch.Tensor, got list"),
    ("layer_norm bias size", "layer_norm", dict(bias=i["bias"][:-1]), nk.NevaValueError,
     "'bias' must have shape [769] (the last dimension of x), got [768]"),
    ("layer_norm bias dtype", "layer_norm", dict(bias=i["bias"].double()), nk.NevaTypeError,
     "'bias' must have the dtype of 'x' (torch.float32), got torch.float64"),
    ("layer_norm weight rank", "layer_norm", dict(weight=i["x"]), nk.NevaValueError,
     "'weight' must have 1 dimensions, got 2 (shape [3, 769])"),
    ("layer_norm residual device", "layer_norm", dict(res=i["residual"].to("meta")), nk.NevaValueError,
     "'residual' must be on the same device as 'x' (cpu), got meta"),
    ("layer_norm empty rows", "layer_norm", dict(x=torch.randn(3, 0)), nk.NevaValueError,
     "'x' must have a non-empty last dimension, got shape [3, 0]"),
    ("layer_norm eps not a number", "layer_norm", dict(eps="1e-5"), nk.NevaValueError,
     "'eps' must be a number >= 0, got '1e-5'"),
    ("layer_norm zero_centered not a bool", "layer_norm", dict(zero_centered=1), nk.NevaValueError,
     "'zero_centered_weight' must be a bool, got int"),
    ("flash rank", "flash", dict(q=i["q"][0]), nk.NevaValueError,
     "'q' must be [batch, seq, heads, head_dim], got shape [9, 4, 40]"),
    ("flash heads do not divide", "flash", dict(k=torch.randn(2, 11, 3, 40), v=torch.randn(2, 11, 3, 40)),
     nk.NevaValueError, "the query heads of 'q' (4) must be a multiple of the key/value heads of 'k' (3)"),
    ("flash head dim mismatch", "flash", dict(k=i["k"][..., :32]), nk.NevaValueError,
     "'k' must have shape [2, *, *, 40] (batch and head_dim of q), got [2, 11, 2, 32]"),
    ("flash v shape", "flash", dict(v=i["v"][:, :10]), nk.NevaValueError, "'v' must have shape [2, 11, 2, 40]"),
    ("flash mixed dtypes", "flash", dict(k=i["k"].half()), nk.NevaTypeError, "'k' must have the dtype of 'q'"),
    ("flash head dim too large", "flash", dict(q=torch.randn(1, 2, 2, 264), k=torch.randn(1, 2, 2, 264),
                                               v=torch.randn(1, 2, 2, 264)), nk.NevaValueError,
     "head_dim must be in 1..256, got 264"),
    ("flash bad scale", "flash", dict(scale=-0.5), nk.NevaValueError, "'softmax_scale' must be a number > 0"),
    ("packed cu_seqlens dtype", "packed", dict(cu_q=i["cu_q"].long()), nk.NevaTypeError,
     "'cu_seqlens_q' must have dtype int32, got torch.int64"),
    ("packed cu_seqlens end", "packed", dict(cu_q=torch.tensor([0, 1, 9], dtype=torch.int32)), nk.NevaValueError,
     "'cu_seqlens_q' must start at 0 and end at the token count 10, got 0 .. 9"),
    ("packed cu_seqlens decreasing", "packed", dict(cu_k=torch.tensor([0, 14, 13], dtype=torch.int32)),
     nk.NevaValueError, "'cu_seqlens_k lengths' values must lie in [0, 14), got values in [-1, 14]"),
    ("packed max_seqlen too small", "packed", dict(max_q=4), nk.NevaValueError,
     "'cu_seqlens_q lengths' values must lie in [0, 5), got values in [1, 9]"),
    ("packed batch mismatch", "packed", dict(cu_k=torch.tensor([0, 13], dtype=torch.int32)), nk.NevaValueError,
     "'cu_seqlens_k' must have shape [3] (batch + 1, like cu_seqlens_q), got [2]"),
    ("decode block id out of range", "decode", dict(block_tables=torch.tensor([[3, 5], [0, 4], [2, 0]],
                                                                                  dtype=torch.int32)),
     nk.NevaValueError, "'block_tables (blocks in use)' values must lie in [0, 5), got values in [0, 5]"),
    ("decode seq_len over capacity", "decode", dict(seq_lens=torch.tensor([20, 33, 16], dtype=torch.int32)),
     nk.NevaValueError, "'seq_lens' values must lie in [0, 33), got values in [16, 33]"),
    ("decode negative seq_len", "decode", dict(seq_lens=torch.tensor([20, -1, 16], dtype=torch.int32)),
     nk.NevaValueError, "'seq_lens' values must lie in [0, 33), got values in [-1, 20]"),
    ("decode table dtype", "decode", dict(block_tables=i["block_tables"].long()), nk.NevaTypeError,
     "'block_tables' must have dtype int32, got torch.int64"),
    ("decode table rows", "decode", dict(block_tables=i["block_tables"][:2]), nk.NevaValueError,
     "'block_tables' must have shape [3, *] (one row per sequence of q), got [2, 2]"),
    ("decode heads do not divide", "decode", dict(decode_q=torch.randn(3, 3, 40)), nk.NevaValueError,
     "the query heads of 'q' (3) must be a multiple of the key/value heads of 'k_cache' (2)"),
    ("decode non-contiguous cache", "decode", dict(k_cache=i["k_cache"].transpose(0, 1).contiguous().transpose(0, 1)),
     nk.NevaValueError, "'k_cache' must be contiguous"),
    ("decode cache rank", "decode", dict(k_cache=i["k_cache"][0]), nk.NevaValueError,
     "'k_cache' must have 4 dimensions, got 3"),
    ("decode q dtype", "decode", dict(decode_q=i["decode_q"].half()), nk.NevaTypeError,
     "'k_cache' must have the dtype of 'q' (torch.float16), got torch.float32"),
    ("append slot out of range", "append", dict(slots=torch.tensor([0, 17, -1, 80])), nk.NevaValueError,
     "'slot_mapping' values must lie in [-1, 80), got values in [-1, 80]"),
    ("append slot below -1", "append", dict(slots=torch.tensor([0, 17, -2, 1])), nk.NevaValueError,
     "'slot_mapping' values must lie in [-1, 80), got values in [-2, 17]"),
    ("append slot count", "append", dict(slots=torch.tensor([0, 1, 2])), nk.NevaValueError,
     "'slot_mapping' must have shape [4] (one slot per token of k), got [3]"),
    ("append slot dtype", "append", dict(slots=torch.tensor([0., 1., 2., 3.])), nk.NevaTypeError,
     "'slot_mapping' must have dtype int32/int64, got torch.float32"),
    ("append head mismatch", "append", dict(new_k=torch.randn(4, 3, 40), new_v=torch.randn(4, 3, 40)),
     nk.NevaValueError, "'k' must have shape [*, 2, 40]"),
    ("rotary position out of range", "rotary", dict(positions=torch.full((2, 9), 64)), nk.NevaValueError,
     "'positions' values must lie in [0, 64), got values in [64, 64]"),
    ("rotary odd rot_dim", "rotary", dict(cos_sin=torch.randn(64, 31)), nk.NevaValueError,
     "'cos_sin_cache' must have an even number of columns"),
    ("rotary positions shape", "rotary", dict(positions=torch.zeros(2, 8, dtype=torch.long)), nk.NevaValueError,
     "'positions' must have shape [2, 9] (the leading dims of q), got [2, 8]"),
    ("project count mismatch", "project", dict(mask=torch.ones(2, 5, dtype=torch.bool)), nk.NevaValueError,
     "Image features and image tokens do not match: tokens: 10, features 6"),
    ("project w1 shape", "project", dict(w1=torch.randn(33, 25)), nk.NevaValueError,
     "'w1' must have shape [*, 24] ([hidden, vision_dim] as nn.Linear stores it), got [33, 25]"),
    ("project mask dtype", "project", dict(mask=i["mask"].int()), nk.NevaTypeError,
     "'image_token_mask' must have dtype bool, got torch.int32"),
    ("project embeds non-contiguous", "project", dict(embeds=i["embeds"].transpose(0, 1).contiguous().transpose(0, 1)),
     nk.NevaValueError, "'inputs_embeds' must be contiguous (image rows are written into it in place)"),
    ("project bias size", "project", dict(b2=torch.randn(768)), nk.NevaValueError,
     "'b2' must have shape [769], got [768]"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(case):
    _, op, changes, error, fragment = case
    with pytest.raises(error) as raised:
        call(op, **changes)
    assert fragment in str(raised.value), str(raised.value)
    assert isinstance(raised.value, nk.NevaError)


def test_valid_inputs_pass_every_check():
    for op in ("rms_norm", "layer_norm", "flash", "packed", "decode", "append", "rotary", "project"):
        call(op)
