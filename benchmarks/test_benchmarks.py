"""The benchmark cases as pytest-benchmark tests: `pytest benchmarks/ --benchmark-only`.

On a GPU the real shapes run; without one, the --quick shapes (so the file always collects and runs).
"""
import pytest
import torch

from benchmarks.run import SUITES, collect

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES, MISSING_SUITES = collect(list(SUITES), DEVICE, quick=DEVICE.type != "cuda")
PARAMS = [pytest.param(fn, id=f"{case.op}{'-bwd' if case.backward else ''}-{case.label}-{name}".replace(" ", "_"))
          for case in CASES for name, fn in case.implementations.items()]


@pytest.mark.parametrize("fn", PARAMS)
def test_benchmark(benchmark, fn):
    if DEVICE.type == "cuda":
        benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=20, warmup_rounds=3)
    else:
        benchmark(fn)


def test_every_suite_loads():
    assert not MISSING_SUITES, MISSING_SUITES
