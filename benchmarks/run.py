"""Measure every case of the chosen suites: each implementation's median time, throughput and share of the roofline."""
from __future__ import annotations

import importlib
import time

import torch
from tqdm import tqdm

from . import roofline
from .case import Case
from .timing import Timer

SUITES = {
    "memory": "benchmarks.memory_bound",    # rms_norm, paged decode (GB/s)
    "compute": "benchmarks.compute_bound",  # flash attention forward/backward, projector (TFLOP/s)
    "model": "benchmarks.end_to_end",       # the whole NeVA model: time to first token, decode tokens/s
}


def collect(suites: list[str], device: torch.device, quick: bool) -> tuple[list[Case], dict[str, str]]:
    """The cases of each suite, and the suites that could not be loaded with the reason."""
    cases, missing = [], {}
    for suite in suites:
        try:
            module = importlib.import_module(SUITES[suite])
        except ImportError as error:
            missing[suite] = f"suite not available: {error}"
            continue
        cases.extend(module.cases(device, quick))
    return cases, missing


def measure_case(case: Case, timer: Timer, ceilings: dict) -> dict:
    results, missing = {}, dict(case.missing)
    for name, fn in case.implementations.items():
        try:
            ms = timer.median_ms(fn)
        except Exception as error:  # an anchor failing (OOM, unsupported shape) is reported, not fatal
            missing[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            continue
        entry = {"ms": ms}
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


def run(suites: list[str], device: torch.device, quick: bool, budget_s: float | None = None) -> dict:
    timer = Timer(device, warmup=2 if quick else 5, repeats=3 if quick else 30)
    small = quick or device.type != "cuda"
    ceilings = {"copy_gbps": roofline.copy_bandwidth_gbps(timer, 64 if small else 1024),
                "matmul_tflops": roofline.matmul_tflops(timer, 512 if small else 8192,
                                                        torch.float32 if device.type != "cuda" else torch.bfloat16)}
    cases, missing_suites = collect(suites, device, quick)
    started, measured, skipped = time.monotonic(), [], []
    for case in tqdm(cases, desc="benchmarks", unit="case"):
        if budget_s is not None and time.monotonic() - started > budget_s:
            skipped.append(f"{case.op} {case.label}")
            continue
        measured.append(measure_case(case, timer, ceilings))
    return {"ceilings": ceilings, "cases": measured, "missing_suites": missing_suites,
            "skipped_for_time": skipped, "quick": quick}
