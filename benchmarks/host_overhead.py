"""Host overhead: what neva's Python costs per op call and per decoder layer per decode step.

At batch 1 a decode step is a race between the GPU's kernels and the host that launches them, so the host's
time matters as much as the kernels'. Both measurements are host wall-clock times at widths where the
arithmetic is negligible, interleaved round by round (every implementation once per round, medians over the
rounds) so that a shared, noisy machine slows them alike:

- per op: each public op on the torch backend, with its value checks (on for a user's calls) and without (as
  the Engine calls it), against the maths it runs called directly (the torch backend's function: no checks, no
  custom-op dispatch, no backend choice; the difference is neva's overhead per call) and against the reference
  function ("raw-torch", the torch backend's maths before neva_kernels.torch_backend). On a GPU the public op
  is also timed on its automatic backend.
- per layer: one decode step of neva's Engine against transformers' eager `generate` (no torch.compile, its
  default attention) on the same tiny decoder (hidden 64, 24 layers, GQA 2:1), batch 1, divided by the layers.
  A step's time is the difference of two generations that differ only in their number of new tokens, so
  prefill and set-up cancel out. On a GPU the engine is timed with and without its CUDA graphs, on a CPU
  eager and with its decode step compiled (Engine(compile_decode=True); compiled during the warm-up).

Host time is the CPU time of the calling thread (torch at one thread), not wall-clock time: on a machine
shared with other work, wall-clock time also counts the waits while other processes run. On a GPU it is the
time to enqueue the work (the device is synchronized before each timed run, not after), which is what the GPU
waits for at these widths.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch

import neva_kernels as nk
from neva_kernels import reference
from neva_kernels.checks import value_checks
from neva_model import Engine, NevaConfig, Request, SamplingParams, TextConfig, VisionConfig

from .case import Case
from .end_to_end import hf_llava, random_model

# The decoder of the measurement (issue 19): arithmetic negligible, depth enough to average over layers.
TEXT = TextConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=24, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=1024)
CONFIG = NevaConfig(vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                        image_size=28, patch_size=14),
                    text=TEXT, image_token_index=511)
PROMPT_TOKENS = 16


def interleaved_host_us(calls: dict[str, Callable[[], object]], rounds: int, calls_per_round: int,
                        device: torch.device) -> dict[str, list[float]]:
    """Per-call host microseconds of each call, one sample per round, the calls taking turns within a round."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # all of the host's work in this thread, where thread_time sees it
    try:
        for call in calls.values():  # warm-up: caches built, kernels compiled
            call()
        for _ in range(rounds):
            for name, call in calls.items():
                sync()
                start = time.thread_time()
                for _ in range(calls_per_round):
                    call()
                samples[name].append((time.thread_time() - start) / calls_per_round * 1e6)
        sync()
    finally:
        torch.set_num_threads(threads)
    return samples


def _median_ms(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(us) * 1e-3 for name, us in samples.items()}


# ---- per op ---------------------------------------------------------------------------------------------

def _op_calls(device: torch.device) -> Iterator[tuple[str, str, Callable, tuple]]:
    """(op, label, public function, its arguments) at the tiny model's decode shapes."""
    f32 = dict(device=device, dtype=torch.float32)
    heads, kv_heads, head_dim, block_size = TEXT.num_heads, TEXT.num_kv_heads, TEXT.attention_head_dim, 16
    x, weight = torch.randn(1, TEXT.hidden_size, **f32), torch.rand(TEXT.hidden_size, **f32) + 0.5
    yield "rms_norm", "1x64", nk.rms_norm, (x, weight, 1e-6)
    yield "rms_norm", "1x64 +residual", nk.rms_norm, (x, weight, 1e-6, torch.randn_like(x))
    q, k = torch.randn(1, heads, head_dim, **f32), torch.randn(1, kv_heads, head_dim, **f32)
    positions = torch.tensor([40], device=device)
    cos_sin = reference.rotary_cos_sin_cache(head_dim, TEXT.max_position_embeddings, device=device)
    yield "rotary_embedding", "1 token h4/2 d16", nk.rotary_embedding, (q, k, positions, cos_sin)
    k_cache = torch.randn(8, block_size, kv_heads, head_dim, **f32)
    v_cache = torch.randn_like(k_cache)
    slots = torch.tensor([40], device=device)
    yield "append_kv_cache", "1 token h2 d16", nk.append_kv_cache, (k, torch.randn_like(k), k_cache, v_cache,
                                                                     slots)
    tables = torch.tensor([[3, 1, 4, 0]], dtype=torch.int32, device=device)
    lens = torch.tensor([41], dtype=torch.int32, device=device)
    yield ("paged_decode_attention", "1 seq x 41 ctx h4/2 d16", nk.paged_decode_attention,
           (q, k_cache, v_cache, tables, lens, head_dim ** -0.5))
    lengths = (5, 9)
    cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32, device=device)
    qp, kp = torch.randn(sum(lengths), heads, head_dim, **f32), torch.randn(sum(lengths), kv_heads, head_dim, **f32)
    yield ("flash_attention", "packed 5+9 causal h4/2 d16", nk.flash_attention,
           (qp, kp, torch.randn_like(kp), True, head_dim ** -0.5, cu, cu, max(lengths), max(lengths)))
    features = torch.randn(1, 4, 32, **f32)
    mask = torch.zeros(10, dtype=torch.bool, device=device)
    mask[2:6] = True
    yield ("project_image_tokens", "4 image tokens 32->64->64", nk.project_image_tokens,
           (features, torch.randn(64, 32, **f32), torch.randn(64, **f32), torch.randn(64, 64, **f32),
            torch.randn(64, **f32), torch.randn(10, 64, **f32), mask))


def _automatic_backend(op: str, args: tuple) -> str:
    return nk.backends.choose(op, args[0].device, args)


def _without_value_checks(call: Callable[[], object]) -> Callable[[], object]:
    """`call` with neva_kernels' data checks off, as the Engine runs the ops."""
    def run():
        with value_checks(False):
            return call()
    return run


def _op_case(op: str, label: str, public: Callable, args: tuple, device: torch.device, quick: bool) -> Case:
    raw, backend_maths = getattr(reference, op), nk.backends.implementation(op, "torch")
    checked = (lambda: public(*args, backend="torch"))
    calls = {"neva-op": torch.inference_mode()(checked),
             "neva-op-no-value-checks": torch.inference_mode()(_without_value_checks(checked)),
             "torch-backend-maths": torch.inference_mode()(lambda: backend_maths(*args)),
             "raw-torch": torch.inference_mode()(lambda: raw(*args))}
    automatic = _automatic_backend(op, args)
    if automatic != "torch":
        calls[f"neva-op-{automatic}"] = torch.inference_mode()(lambda: public(*args))
    rounds, per_round = (15, 20) if quick else (60, 50)

    def measure() -> dict[str, float]:
        return _median_ms(interleaved_host_us(calls, rounds, per_round, device))
    return Case(op="host overhead per op call", label=f"{op} {label}", size=1, implementations=calls,
                measure=measure)


# ---- the registration of a custom op --------------------------------------------------------------------

def _registration_case(device: torch.device, quick: bool) -> Case:
    """One body (a clone) with rms_norm's signature, called through each way of registering an op: what the
    dispatch itself costs."""
    def body(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
        return x.clone()
    if not hasattr(torch.ops.neva_host_bench, "custom_op"):  # registered once per process
        library = torch.library.Library("neva_host_bench", "FRAGMENT")
        library.define("library(Tensor x, Tensor weight, float eps, str backend) -> Tensor")
        library.impl("library", body, "CompositeExplicitAutograd")
        # Both unregister their op when collected: keep them for the process.
        _registration_case.keep = (library, torch.library.custom_op("neva_host_bench::custom_op", body,
                                                                      mutates_args=()))
    x, weight = torch.randn(1, TEXT.hidden_size, device=device), torch.randn(TEXT.hidden_size, device=device)
    calls = {"torch.library.custom_op": lambda: torch.ops.neva_host_bench.custom_op.default(x, weight, 1e-6, "torch"),
             "Library.define+impl (neva's)": lambda: torch.ops.neva_host_bench.library.default(x, weight, 1e-6,
                                                                                                "torch"),
             "C++-registered (aten::clone)": lambda: torch.ops.aten.clone.default(x),
             "the body called directly": lambda: body(x, weight, 1e-6, "torch")}
    calls = {name: torch.inference_mode()(call) for name, call in calls.items()}
    rounds, per_round = (15, 20) if quick else (60, 50)
    return Case(op="host overhead per op call", label="registration: rms_norm's signature, a clone as body", size=1,
                implementations=calls,
                measure=lambda: _median_ms(interleaved_host_us(calls, rounds, per_round, device)))


# ---- per decoder layer per decode step ------------------------------------------------------------------

def _prompt() -> list[int]:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, TEXT.vocab_size - 1, (PROMPT_TOKENS,), generator=generator).tolist()


def decode_step_calls(device: torch.device, short: int, long: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (generate `short` new tokens, generate `long`), for neva's Engine(s) and transformers."""
    neva, hf = random_model(CONFIG, device, torch.float32), hf_llava(CONFIG, device, torch.float32)
    hf.generation_config.eos_token_id = None  # every generation runs to its max_new_tokens, as neva's below
    ids = _prompt()
    hf_ids = torch.tensor([ids], device=device)

    def neva_generate(engine: Engine, n: int) -> Callable:
        request = Request(ids, None, SamplingParams(max_new_tokens=n, ignore_eos=True))
        return lambda: engine.generate([request])

    def hf_generate(n: int) -> Callable:
        return torch.inference_mode()(lambda: hf.generate(input_ids=hf_ids, max_new_tokens=n, min_new_tokens=n,
                                                          do_sample=False, pad_token_id=0))

    make = (lambda **options: Engine(neva, max_batch_size=1, max_seq_len=PROMPT_TOKENS + long, **options))
    # The default engine (CUDA graphs on a GPU, eager on a CPU), and on a CPU the compiled decode step too.
    engines = {"neva-engine": make()}
    if device.type == "cuda":
        engines["neva-engine-eager"] = make(cuda_graph=False)
    else:
        engines["neva-engine-compiled"] = make(compile_decode=True)
    calls = {name: (neva_generate(e, short), neva_generate(e, long)) for name, e in engines.items()}
    calls["hf-transformers-generate"] = (hf_generate(short), hf_generate(long))
    return calls


def per_layer_step_ms(calls: dict[str, tuple[Callable, Callable]], short: int, long: int, rounds: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Each name's host ms per decoder layer per decode step, one sample per round (interleaved)."""
    flat = {(name, n): call for name, pair in calls.items() for n, call in zip((short, long), pair)}
    us = interleaved_host_us(flat, rounds, 1, device)
    return {name: [(b - a) / (long - short) / TEXT.num_layers * 1e-3 for a, b in zip(us[(name, short)],
                                                                                      us[(name, long)])]
            for name in calls}


def _layer_case(device: torch.device, quick: bool) -> Case:
    short, long = (2, 10) if quick else (4, 36)
    rounds = 7 if quick else 25
    calls = decode_step_calls(device, short, long)

    def measure() -> dict[str, float]:
        samples = per_layer_step_ms(calls, short, long, rounds, device)
        return {name: statistics.median(ms) for name, ms in samples.items()}
    return Case(op="host time per decoder layer per decode step",
                label=f"batch 1, hidden {TEXT.hidden_size}, {TEXT.num_layers} layers, GQA "
                      f"{TEXT.num_heads // TEXT.num_kv_heads}:1, fp32",
                size=1, implementations={name: pair[1] for name, pair in calls.items()}, measure=measure)


def cases(device: torch.device, quick: bool) -> Iterator[Case]:
    yield _registration_case(device, quick)
    for op, label, public, args in _op_calls(device):
        yield _op_case(op, label, public, args, device, quick)
    yield _layer_case(device, quick)
