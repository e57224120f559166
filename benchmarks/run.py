"""Measure the cases of the chosen suites within a time budget: each implementation's median time, throughput and
share of the roofline.

Cases are built one at a time, when the previous one is measured, so the budget bounds set-up (model building,
Triton autotuning, torch.compile) as well as timing; it is checked before each case is built and between the
implementations of a case. The results are handed to `save` after every case, so a run killed at any point keeps
what it measured. Value checks (one device sync each) are off while timing: the numbers are those of a model that
validated its inputs once.
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator

import torch

from neva_kernels.checks import value_checks

from . import roofline
from .case import Case
from .timing import Timer

SUITES = {
    "memory": "benchmarks.memory_bound",    # rms_norm, paged decode (GB/s)
    "layer_norm": "benchmarks.layer_norm",  # layer_norm vs eager, compile, Liger (GB/s)
    "compute": "benchmarks.compute_bound",  # flash attention forward/backward, projector (TFLOP/s)
    "model": "benchmarks.end_to_end",       # the whole NeVA model: time to first token, decode tokens/s
    "host": "benchmarks.host_overhead",     # host time per op call and per decoder layer per decode step
    "serving": "benchmarks.serving",        # neva serve under N concurrent clients: throughput, TTFT, latency
    "transformers": "benchmarks.hf_transformers",  # HF LLaVA stock (sdpa) vs neva-accelerated: prefill, decode, train
}
OUT_OF_TIME = "not measured: time budget spent"


class Budget:
    """A number of seconds that starts running when the Budget is made; None never runs out."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def suite_cases(suite: str, device: torch.device, quick: bool) -> Iterator[Case]:
    """The cases of one suite, each built when it is asked for. ImportError if the suite cannot be loaded here."""
    return importlib.import_module(SUITES[suite]).cases(device, quick)


def collect(suites: list[str], device: torch.device, quick: bool) -> tuple[list[Case], dict[str, str]]:
    """Every case of the suites, built now, and the suites that could not be loaded with the reason."""
    cases, missing = [], {}
    for suite in suites:
        try:
            cases.extend(suite_cases(suite, device, quick))
        except ImportError as error:
            missing[suite] = f"suite not available: {error}"
    return cases, missing


def measure_case(case: Case, timer: Timer, ceilings: dict, budget: Budget = Budget(None)) -> dict:
    results, missing = {}, dict(case.missing)
    self_timed = case.measure() if case.measure else {}
    for name, fn in case.implementations.items():
        if budget.spent():
            missing[name] = OUT_OF_TIME
            continue
        try:
            if case.measure:
                measured = self_timed[name]
                entry = dict(measured) if isinstance(measured, dict) else {"ms": measured}
            else:
                with value_checks(False):
                    entry = {"ms": timer.median_ms(fn)}
        except Exception as error:  # an anchor failing (OOM, unsupported shape) is reported, not fatal
            missing[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            continue
        ms = entry["ms"]
        if case.bytes:
            entry["gbps"] = case.bytes / (ms * 1e-3) / 1e9
            entry["roofline_pct"] = 100 * entry["gbps"] / ceilings["copy_gbps"]
        if case.tokens:
            entry["tokens_per_s"] = case.tokens / (ms * 1e-3)
        if case.flops:
            entry["tflops"] = case.flops / (ms * 1e-3) / 1e12
            entry["roofline_pct"] = 100 * entry["tflops"] / ceilings["matmul_tflops"]
        results[name] = entry
    for name, entry in results.items():  # neva's implementations against every anchor of the same case
        if name.startswith("neva-"):
            entry["speedup"] = {other: results[other]["ms"] / entry["ms"] for other in results
                                if not other.startswith("neva-")}
    return {"op": case.op, "label": case.label, "size": case.size, "backward": case.backward, "bytes": case.bytes,
            "flops": case.flops, "results": results, "missing": missing}


def run(suites: list[str], device: torch.device, quick: bool, budget_s: float | None = None,
        save: Callable[[dict], None] = lambda data: None) -> dict:
    budget = Budget(budget_s)
    data = {"ceilings": {}, "cases": [], "missing_suites": {}, "skipped_for_time": [], "quick": quick}
    save(data)
    timer = Timer(device, warmup=2 if quick else 5, repeats=3 if quick else 30)
    small = quick or device.type != "cuda"
    data["ceilings"] = {
        "copy_gbps": roofline.copy_bandwidth_gbps(timer, 64 if small else 1024),
        "matmul_tflops": roofline.matmul_tflops(timer, 512 if small else 8192,
                                                torch.float32 if device.type != "cuda" else torch.bfloat16)}
    save(data)
    for suite in suites:
        try:
            cases = suite_cases(suite, device, quick)
        except ImportError as error:
            data["missing_suites"][suite] = f"suite not available: {error}"
            continue
        measured = 0
        while not budget.spent():
            case = next(cases, None)  # builds the case: its set-up counts against the budget
            if case is None:
                break
            data["cases"].append(measure_case(case, timer, data["ceilings"], budget))
            measured += 1
            print(f"benchmarks: {case.op} {case.label} measured", flush=True)
            save(data)
        else:
            data["skipped_for_time"].append(f"suite {suite} (stopped after {measured} cases)")
            save(data)
    return data
