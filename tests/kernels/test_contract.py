"""The op contract: custom ops pass opcheck, compile without graph breaks, differentiate, and pick backends."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends, reference

ROOT = str(Path(__file__).resolve().parents[2])


def small_inputs(dtype=torch.float32, requires_grad=False, hidden=769, d=40):
    """One small, odd-shaped set of inputs for every op (hidden: model width, d: head dim)."""
    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)
    num_blocks, block_size, hkv = 5, 16, 2
    return dict(
        x=rand(3, hidden), weight=rand(hidden), bias=rand(hidden), residual=rand(3, hidden),
        q=rand(2, 9, 4, d), k=rand(2, 11, hkv, d), v=rand(2, 11, hkv, d),
        packed_q=rand(10, 4, d), packed_k=rand(13, hkv, d), packed_v=rand(13, hkv, d),
        cu_q=torch.tensor([0, 1, 10], dtype=torch.int32), cu_k=torch.tensor([0, 4, 13], dtype=torch.int32),
        decode_q=rand(3, 4, d),
        k_cache=torch.randn(num_blocks, block_size, hkv, d, dtype=dtype),
        v_cache=torch.randn(num_blocks, block_size, hkv, d, dtype=dtype),
        block_tables=torch.tensor([[3, 1], [0, 4], [2, 0]], dtype=torch.int32),
        seq_lens=torch.tensor([20, 1, 16], dtype=torch.int32),
        new_k=rand(4, hkv, d), new_v=rand(4, hkv, d), slots=torch.tensor([0, 17, -1, 79]),
        positions=torch.tensor([[0, 5, 9, 2, 7, 1, 3, 8, 4], [1, 1, 2, 3, 5, 8, 13, 21, 34]]),
        cos_sin=reference.rotary_cos_sin_cache(d - 8, 64, dtype=dtype),
        features=rand(2, 3, 24), w1=rand(33, 24), b1=rand(33), w2=rand(hidden, 33), b2=rand(hidden),
        embeds=rand(2, 5, hidden), mask=torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1]], dtype=torch.bool),
    )


def opcheck_cases():
    i = small_inputs(requires_grad=True)
    cache_copy = lambda name: i[name].clone()  # noqa: E731  (opcheck mutates in-place arguments)
    scale = i["q"].shape[-1] ** -0.5
    return {
        "rms_norm": (torch.ops.neva.rms_norm, (i["x"], i["weight"], 1e-6, "torch")),
        "fused_add_rms_norm": (torch.ops.neva.fused_add_rms_norm, (i["x"], i["weight"], 1e-6, i["residual"], "torch")),
        "layer_norm": (torch.ops.neva.layer_norm, (i["x"], i["weight"], i["bias"], 1e-5, False, "torch")),
        "layer_norm_without_bias": (torch.ops.neva.layer_norm, (i["x"], i["weight"], None, 1e-5, True, "torch")),
        "fused_add_layer_norm": (torch.ops.neva.fused_add_layer_norm,
                                 (i["x"], i["weight"], i["bias"], 1e-5, True, i["residual"], "torch")),
        "flash_attention": (torch.ops.neva.flash_attention,
                            (i["q"], i["k"], i["v"], True, scale, None, None, None, None, "torch")),
        "flash_attention_packed": (torch.ops.neva.flash_attention,
                                   (i["packed_q"], i["packed_k"], i["packed_v"], False, scale, i["cu_q"], i["cu_k"],
                                    9, 9, "torch")),
        "paged_decode_attention": (torch.ops.neva.paged_decode_attention,
                                   (i["decode_q"].detach(), i["k_cache"], i["v_cache"], i["block_tables"],
                                    i["seq_lens"], scale, "torch")),
        "append_kv_cache": (torch.ops.neva.append_kv_cache,
                            (i["new_k"].detach(), i["new_v"].detach(), cache_copy("k_cache"), cache_copy("v_cache"),
                             i["slots"], "torch")),
        "rotary_embedding": (torch.ops.neva.rotary_embedding,
                             (i["q"], i["q"][:, :, :2].detach(), i["positions"], i["cos_sin"], False, "torch")),
        "project_image_tokens": (torch.ops.neva.project_image_tokens,
                                 tuple(t.detach() for t in (i["features"], i["w1"], i["b1"], i["w2"], i["b2"],
                                                            i["embeds"])) + (i["mask"], "torch")),
        "project_image_tokens_functional": (torch.ops.neva.project_image_tokens_functional,
                                            (i["features"], i["w1"], i["b1"], i["w2"], i["b2"], i["embeds"],
                                             i["mask"], "torch")),
    }


@pytest.mark.parametrize("case", list(opcheck_cases()))
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


def every_op(i):
    """A function that calls every public op once (what the model does per layer, in miniature)."""
    y, h = nk.rms_norm(i["x"], i["weight"], 1e-6, residual=i["residual"])
    ln, ln_h = nk.layer_norm(y, i["weight"], i["bias"], 1e-5, residual=h, zero_centered_weight=True)
    attn = nk.flash_attention(i["q"], i["k"], i["v"], causal=True)
    packed = nk.flash_attention(i["packed_q"], i["packed_k"], i["packed_v"], False, None, i["cu_q"], i["cu_k"], 9, 9)
    q_rot, k_rot = nk.rotary_embedding(i["q"], i["k"][:, :9], i["positions"], i["cos_sin"])
    nk.append_kv_cache(i["new_k"], i["new_v"], i["k_cache"], i["v_cache"], i["slots"])
    decode = nk.paged_decode_attention(i["decode_q"], i["k_cache"], i["v_cache"], i["block_tables"], i["seq_lens"])
    embeds = nk.project_image_tokens(i["features"], i["w1"], i["b1"], i["w2"], i["b2"], i["embeds"], i["mask"])
    return (nk.rms_norm(y, i["weight"]), h, nk.layer_norm(ln, i["weight"], None), ln_h, attn, packed, q_rot, k_rot,
            decode, embeds.clone(), i["k_cache"].clone())


def test_every_op_compiles_fullgraph_and_matches_eager():
    eager_inputs, compiled_inputs = small_inputs(), small_inputs()
    for key in eager_inputs:
        compiled_inputs[key] = eager_inputs[key].clone()
    expected = every_op(eager_inputs)
    torch._dynamo.reset()
    actual = torch.compile(every_op, fullgraph=True)(compiled_inputs)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("name,call", [
    ("rms_norm", lambda i: nk.rms_norm(i["x"], i["weight"])),
    ("fused_add_rms_norm", lambda i: nk.rms_norm(i["x"], i["weight"], residual=i["residual"])),
    ("layer_norm", lambda i: nk.layer_norm(i["x"], i["weight"], i["bias"])),
    ("layer_norm_without_bias", lambda i: nk.layer_norm(i["x"], i["weight"], None, zero_centered_weight=True)),
    ("fused_add_layer_norm", lambda i: nk.layer_norm(i["x"], i["weight"], i["bias"], residual=i["residual"],
                                                     zero_centered_weight=True)),
    ("flash_attention", lambda i: nk.flash_attention(i["q"], i["k"], i["v"], causal=True, return_lse=True)),
    ("flash_attention_packed", lambda i: nk.flash_attention(i["packed_q"], i["packed_k"], i["packed_v"], True, None,
                                                            i["cu_q"], i["cu_k"])),
    ("rotary_embedding", lambda i: nk.rotary_embedding(i["q"], i["k"][:, :9], i["positions"], i["cos_sin"], True)),
    ("project_image_tokens", lambda i: nk.project_image_tokens(i["features"], i["w1"], i["b1"], i["w2"], i["b2"],
                                                               i["embeds"], i["mask"])),
])
def test_gradients_pass_gradcheck_in_float64(name, call):
    inputs = small_inputs(torch.float64, requires_grad=True, hidden=11, d=12)
    names = [key for key, t in inputs.items() if t.requires_grad]

    def as_function(*tensors):
        outputs = call({**inputs, **dict(zip(names, tensors))})
        return outputs if isinstance(outputs, tuple) else (outputs,)
    assert torch.autograd.gradcheck(as_function, tuple(inputs[n] for n in names))


def test_project_image_tokens_under_autograd_returns_new_tensor():
    i = small_inputs(requires_grad=True)
    embeds_before = i["embeds"].detach().clone()
    out = nk.project_image_tokens(i["features"], i["w1"], i["b1"], i["w2"], i["b2"], i["embeds"], i["mask"])
    out.sum().backward()
    assert torch.equal(i["embeds"].detach(), embeds_before)
    assert i["w1"].grad is not None and i["features"].grad is not None
    assert torch.equal(i["embeds"].grad[~i["mask"]], torch.ones_like(i["embeds"].grad[~i["mask"]]))
    assert torch.equal(i["embeds"].grad[i["mask"]], torch.zeros_like(i["embeds"].grad[i["mask"]]))


# ---- backend choice ------------------------------------------------------------------------------------

@pytest.fixture
def restore_backend_settings():
    yield
    nk.set_backend(None)
    for op in nk.OPS:
        nk.set_backend(None, op=op)


def test_cpu_tensors_pick_torch_automatically():
    i = small_inputs()
    assert backends.choose("rms_norm", i["x"].device, (i["x"], i["weight"], 1e-6)) == "torch"


def test_the_backend_is_resolved_once_per_op_device_dtype_and_request(monkeypatch, restore_backend_settings):
    i = small_inputs()
    resolved, resolve = [], backends._resolve
    monkeypatch.setattr(backends, "_resolve", lambda *key: resolved.append(key) or resolve(*key))
    monkeypatch.setattr(backends, "_candidates", {})
    for _ in range(3):
        nk.rms_norm(i["x"], i["weight"])
    nk.rms_norm(i["x"].double(), i["weight"].double())
    nk.set_backend("torch", op="rms_norm")  # a setting is part of the key: it takes effect at once
    nk.rms_norm(i["x"], i["weight"])
    cpu = i["x"].device
    assert resolved == [("rms_norm", cpu, torch.float32, None), ("rms_norm", cpu, torch.float64, None),
                        ("rms_norm", cpu, torch.float32, "torch")]
    nk.set_backend("cuda", op="rms_norm")  # an unable request is refused on every call, cached or not
    for _ in range(2):
        with pytest.raises(nk.BackendUnavailableError, match="backend 'cuda' was requested"):
            nk.rms_norm(i["x"], i["weight"])


def test_requesting_an_unable_backend_raises_with_the_reason():
    i = small_inputs()
    with pytest.raises(nk.BackendUnavailableError, match="rms_norm: backend 'cuda' was requested"):
        nk.rms_norm(i["x"], i["weight"], backend="cuda")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_float64_is_refused_by_the_kernel_backends(backend):
    if backend in backends._backend_missing:
        pytest.skip(f"the {backend} backend is missing here: {backends._backend_missing[backend]}")
    x = torch.randn(2, 8, dtype=torch.float64)
    reason = f"the {backend} backend has no float64 kernels (the torch backend has)"
    assert backends.why_unable("rms_norm", backend, torch.device("cuda"), (x, x[0], 1e-6)) == reason
    with pytest.raises(nk.BackendUnavailableError, match=re.escape(reason)):
        nk.rms_norm(x, x[0], backend=backend)


def test_unknown_backend_name_is_an_error():
    i = small_inputs()
    with pytest.raises(nk.NevaValueError, match="backend must be one of cuda, triton, torch, got 'cudnn'"):
        nk.rms_norm(i["x"], i["weight"], backend="cudnn")


def test_global_and_per_op_settings(restore_backend_settings):
    i = small_inputs()
    nk.set_backend("cuda")
    with pytest.raises(nk.BackendUnavailableError):
        nk.rms_norm(i["x"], i["weight"])
    nk.set_backend("torch", op="rms_norm")  # the per-op setting wins over the global one
    nk.rms_norm(i["x"], i["weight"])
    assert nk.rms_norm(i["x"], i["weight"], backend="torch").shape == i["x"].shape  # per call wins over both


def test_environment_variable_is_parsed(monkeypatch, restore_backend_settings):
    monkeypatch.setenv("NEVA_KERNELS_BACKEND", "torch, flash_attention=triton")
    backends._read_environment()
    assert backends._global_choice == "torch" and backends._per_op_choice == {"flash_attention": "triton"}
    monkeypatch.setenv("NEVA_KERNELS_BACKEND", "rms_norm=fast")
    with pytest.raises(nk.NevaValueError, match="got 'fast'"):
        backends._read_environment()
    monkeypatch.setenv("NEVA_KERNELS_BACKEND", "group_norm=torch")
    with pytest.raises(nk.NevaValueError, match="op must be one of"):
        backends._read_environment()


def test_a_bad_environment_variable_raises_at_first_use_and_at_every_use_after(monkeypatch):
    """Importing neva_kernels does not read NEVA_KERNELS_BACKEND (a bad value must not break `import`); the first
    op call does, and a bad value applies nothing and is refused again by the next use."""
    monkeypatch.setattr(backends, "_environment_read", False)
    monkeypatch.setenv("NEVA_KERNELS_BACKEND", "torch, rms_norm=fastest")
    i, before = small_inputs(), (backends._global_choice, dict(backends._per_op_choice))
    for use in (lambda: nk.rms_norm(i["x"], i["weight"]), lambda: nk.set_backend("torch"),
                backends.read_environment):
        with pytest.raises(nk.NevaValueError, match="^NEVA_KERNELS_BACKEND: backend must be one of cuda, triton, "
                                                    "torch, got 'fastest'$"):
            use()
    assert (backends._global_choice, backends._per_op_choice) == before


@pytest.mark.slow  # a fresh interpreter imports torch
def test_importing_neva_kernels_ignores_the_environment_variable():
    env = {**os.environ, "NEVA_KERNELS_BACKEND": "fastest", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", "import neva_kernels"], env=env, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()


def test_value_checks_can_be_switched_off():
    """A block index of -1 is caught while checks are on; off, it reaches the torch backend unchecked, whose
    indexing wraps it to the last block."""
    i = small_inputs()
    bad_tables, last_block = i["block_tables"].clone(), i["block_tables"].clone()
    bad_tables[0, 0], last_block[0, 0] = -1, i["k_cache"].shape[0] - 1

    def decode(tables):
        return nk.paged_decode_attention(i["decode_q"], i["k_cache"], i["v_cache"], tables, i["seq_lens"],
                                         backend="torch")

    message = r"'block_tables \(blocks in use\)' values must lie in \[0, 5\), got values in \[-1, "
    with pytest.raises(nk.NevaValueError, match=message):
        decode(bad_tables)
    with nk.value_checks(False):
        torch.testing.assert_close(decode(bad_tables), decode(last_block), rtol=0, atol=0)
    with pytest.raises(nk.NevaValueError, match=message):  # the block restored the setting
        decode(bad_tables)
    nk.set_value_checks(False)
    try:
        torch.testing.assert_close(decode(bad_tables), decode(last_block), rtol=0, atol=0)
    finally:
        nk.set_value_checks(True)
    with pytest.raises(nk.NevaValueError, match=message):
        decode(bad_tables)


def test_use_backend_restores_the_previous_setting(restore_backend_settings):
    i = small_inputs()
    nk.set_backend("triton", op="rms_norm")
    with nk.use_backend("cuda"), nk.use_backend("torch", op="rms_norm"):
        assert backends.choose("rms_norm", i["x"].device, (i["x"], i["weight"], 1e-6)) == "torch"
        with pytest.raises(nk.BackendUnavailableError, match="backend 'cuda' was requested"):
            nk.flash_attention(i["q"], i["k"], i["v"])
    assert backends._global_choice is None and backends._per_op_choice == {"rms_norm": "triton"}


def test_cuda_kernels_are_automatic_only_where_measured(monkeypatch):
    """Without a measurement for this GPU architecture the automatic order skips cuda; with one it follows it."""
    monkeypatch.setattr(backends, "architecture", lambda device: "sm90")
    gpu = torch.device("cuda")
    monkeypatch.setattr(backends, "_measured", {})
    assert backends._preference("rms_norm", gpu) == ("triton", "torch")
    monkeypatch.setattr(backends, "_measured", {"sm90": {"rms_norm": ["cuda", "triton"]}})
    assert backends._preference("rms_norm", gpu) == ("cuda", "triton", "torch")
    assert backends._preference("flash_attention", gpu) == ("triton", "torch")


def test_preference_table_is_ranked_from_results(tmp_path):
    import importlib.util
    import json
    import os
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "update_preferences.py")
    spec = importlib.util.spec_from_file_location("update_preferences", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rank = module.rank
    case = {"op": "rms_norm", "backward": False,
            "results": {"neva-cuda": {"ms": 1.0}, "neva-triton": {"ms": 1.5}, "torch-eager": {"ms": 3.0}}}
    slower = {**case, "op": "paged_decode_attention",
              "results": {"neva-cuda": {"ms": 2.0}, "neva-triton": {"ms": 1.0}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"stamp": {"architecture": "sm90"}, "quick": False, "cases": [case, slower]}))
    assert rank([str(path)]) == {"sm90": {"rms_norm": ["cuda", "triton"],
                                          "paged_decode_attention": ["triton", "cuda"]}}
