"""The benchmark harness on CPU, with a stand-in suite: cases built one at a time inside the budget, a long case cut
between its implementations, value checks off only while timing, results.json rewritten after every case."""
import json
import sys
import time
import types

import pytest
import torch

from benchmarks import __main__ as cli
from benchmarks import run as harness
from benchmarks.case import Case
from neva_kernels import checks


@pytest.fixture
def suite(monkeypatch):
    """Installs a suite "standin" whose cases are made by the function given to the returned installer."""
    monkeypatch.setattr(harness.roofline, "copy_bandwidth_gbps", lambda timer, megabytes: 100.0)
    monkeypatch.setattr(harness.roofline, "matmul_tflops", lambda timer, n, dtype: 1.0)

    def install(cases):
        monkeypatch.setitem(sys.modules, "standin_suite", types.SimpleNamespace(cases=cases))
        monkeypatch.setitem(harness.SUITES, "standin", "standin_suite")
    return install


def case(label: str, **implementations) -> Case:
    return Case(op="standin", label=label, size=1, implementations=implementations, bytes=1000)


def test_cases_are_built_one_at_a_time_within_the_budget(suite):
    built, saved = [], []

    def cases(device, quick):
        for i in range(10):
            time.sleep(0.4)  # set-up (a model, autotuning) that the budget must bound
            built.append(i)
            yield case(f"case {i}", fast=lambda: None)
    suite(cases)
    data = harness.run(["standin"], torch.device("cpu"), quick=True, budget_s=1.0,
                       save=lambda d: saved.append(len(d["cases"])))
    assert 1 <= len(built) <= 4, built  # 0.4 s each against 1 s: the rest were never built
    assert [c["label"] for c in data["cases"]] == [f"case {i}" for i in built]
    assert data["skipped_for_time"] == [f"suite standin (stopped after {len(built)} cases)"]
    assert saved[:2] == [0, 0] and saved[2:2 + len(built)] == list(range(1, len(built) + 1))


def test_a_long_case_is_cut_between_its_implementations(suite):
    suite(lambda device, quick: iter([case("long", slow=lambda: time.sleep(0.2), never=lambda: None)]))
    data = harness.run(["standin"], torch.device("cpu"), quick=True, budget_s=0.5)
    (measured,) = data["cases"]
    assert measured["results"]["slow"]["ms"] >= 200
    assert measured["missing"] == {"never": harness.OUT_OF_TIME}


def test_value_checks_are_off_only_while_timing(suite):
    seen = {}

    def cases(device, quick):
        seen["set-up"] = checks.value_checks_enabled()
        yield case("checks", record=lambda: seen.setdefault("timed", checks.value_checks_enabled()))
    suite(cases)
    assert checks.value_checks_enabled()
    harness.run(["standin"], torch.device("cpu"), quick=True)
    assert seen == {"set-up": True, "timed": False}
    assert checks.value_checks_enabled()


def test_a_failing_implementation_is_reported_and_the_others_measured(suite):
    def broken():
        raise RuntimeError("no kernel for this shape\nsecond line")
    suite(lambda device, quick: iter([case("mixed", broken=broken, fine=lambda: None)]))
    (measured,) = harness.run(["standin"], torch.device("cpu"), quick=True)["cases"]
    assert measured["missing"] == {"broken": "failed: RuntimeError: no kernel for this shape"}
    assert set(measured["results"]) == {"fine"}


def test_results_json_is_rewritten_after_every_case(suite, tmp_path):
    results = tmp_path / "session" / "results.json"
    on_disk = []

    def cases(device, quick):
        for i in range(3):
            on_disk.append(len(json.loads(results.read_text())["cases"]))  # before case i is built
            yield case(f"case {i}", fast=lambda: None)
    suite(cases)
    cli.main(["--suite", "standin", "--quick", "--device", "cpu", "--out", str(tmp_path / "tables"),
              "--json", str(results)])
    assert on_disk == [0, 1, 2]
    data = json.loads(results.read_text())
    assert [c["label"] for c in data["cases"]] == ["case 0", "case 1", "case 2"]
    assert data["stamp"]["device"].startswith("CPU") and data["plots"]
    assert (tmp_path / "tables" / "results.md").exists() and not (tmp_path / "tables" / "results.json").exists()
    assert not list(results.parent.glob("*.partial"))


def test_a_suite_that_cannot_load_is_recorded(monkeypatch):
    monkeypatch.setitem(harness.SUITES, "absent", "benchmarks.no_such_suite")
    monkeypatch.setattr(harness.roofline, "copy_bandwidth_gbps", lambda timer, megabytes: 100.0)
    monkeypatch.setattr(harness.roofline, "matmul_tflops", lambda timer, n, dtype: 1.0)
    data = harness.run(["absent"], torch.device("cpu"), quick=True)
    assert data["missing_suites"]["absent"].startswith("suite not available: No module named")
    assert data["cases"] == [] and data["skipped_for_time"] == []
