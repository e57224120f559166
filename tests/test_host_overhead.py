"""Issue 19's bound: neva's host time per decoder layer per decode step against transformers' eager generate.

Measured as benchmarks/host_overhead.py does (same run, same tiny decoder, CPU, interleaved rounds); the ratio
is the median of the per-round ratios, so that load on a shared machine slows both sides of a round alike.
neva's engine is timed with its decode step compiled (Engine(compile_decode=True)), the path that reaches the
issue's target; the benchmark reports the eager engine beside it.
"""
import statistics

import pytest
import torch

from benchmarks.host_overhead import decode_step_calls, per_layer_step_ms

BOUND = 1.0  # generous: the target of issue 19 is 0.5 (benchmarks/host_overhead.py reports the ratio)


@pytest.mark.slow
def test_neva_host_time_per_layer_per_decode_step_is_at_most_transformers():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        short, long = 2, 10
        calls = decode_step_calls(torch.device("cpu"), short, long)
        calls = {name: calls[name] for name in ("neva-engine-compiled", "hf-transformers-generate")}
        samples = per_layer_step_ms(calls, short, long, rounds=9, device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    ratio = statistics.median(n / t for n, t in zip(samples["neva-engine-compiled"],
                                                     samples["hf-transformers-generate"]))
    assert ratio <= BOUND, f"neva's host time per layer per decode step is {ratio:.2f}x transformers'"
