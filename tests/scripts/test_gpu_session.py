"""The CPU rehearsal of scripts/gpu_session.sh (`--rehearse`): stand-ins for nvidia-smi, compute-sanitizer and
cuobjdump, stand-in GPU tests (one passes, one fails, one hangs) and a 45 s budget. Steps are cut on the way (the
stand-in nvidia-smi hangs, so does a test); $OUT must still hold every file the script promises, within the device
tool's limits, and nothing left from an earlier run."""
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUDGET = 45
PROMISED = {"summary.txt", "build.log", "selfcheck.log", "tests.log", "sanitizer.log", "bench.log", "results.json",
            "session.tgz"}
STEPS = ("build", "selfcheck", "tests", "sanitizer-memcheck", "sanitizer-racecheck", "sanitizer-synccheck", "bench")
STALE = '{"stale": "left by an earlier run"}'


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Runs the rehearsal once; returns ($OUT, the finished process, its wall-clock seconds, its start time)."""
    out = tmp_path_factory.mktemp("out")
    (out / "results.json").write_text(STALE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as on a GPU machine
    env.update(OUT=str(out), PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"])
    started = time.time()
    done = subprocess.run(["bash", "scripts/gpu_session.sh", "--rehearse", str(BUDGET)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=BUDGET + 60)
    return out, done, time.time() - started, started


def test_every_promised_file_comes_back_within_the_budget_and_the_device_limits(rehearsal):
    out, done, seconds, _ = rehearsal
    assert done.returncode == 0, done.stderr[-2000:]
    assert seconds <= BUDGET + 5, f"the rehearsal took {seconds:.0f}s of a {BUDGET}s budget"
    entries = {entry.name: entry for entry in os.scandir(out)}
    assert set(entries) == PROMISED, sorted(entries)
    for name, entry in entries.items():
        assert entry.is_file(follow_symlinks=False) and re.fullmatch(r"[A-Za-z0-9._-]+", name)
        assert 0 < entry.stat().st_size <= 16 * 1024 * 1024, name


def test_the_summary_names_every_step_and_what_became_of_it(rehearsal):
    summary = (rehearsal[0] / "summary.txt").read_text()
    assert summary.startswith(f"gpu_session.sh --rehearse budget {BUDGET}s")
    assert "gpu: NVIDIA H200 (rehearsal stand-in), 9.0" in summary
    for step in STEPS:
        assert re.search(rf"^{step}: (rc=\d+|CUT at its \d+s limit) after \d+s$|^{step}: skipped, only -?\d+s would "
                         rf"be left for it$", summary, re.M), step
    assert re.search(r"^total \d+s of the 45s budget$", summary, re.M)


def test_a_hung_probe_is_cut_at_its_timeout(rehearsal):
    build_log = (rehearsal[0] / "build.log").read_text()
    assert re.search(r"=== nvidia-smi\n\(rc=124; 124: no answer within \d+s\)", build_log)
    assert "=== build (limit" in build_log


def test_each_log_holds_its_steps_output(rehearsal):
    out = rehearsal[0]
    summary = (out / "summary.txt").read_text()
    for step in STEPS:
        log = "sanitizer.log" if step.startswith("sanitizer") else f"{step}.log"
        assert re.search(rf"^=== {step}[ :]", (out / log).read_text(), re.M), (step, log)
    if re.search(r"^tests: rc=\d+", summary, re.M):  # the tests step ran to its end (on a slow machine it is cut)
        for line in (r"PASSED +tests/scripts/rehearsal_cases.py::test_passes",
                     r"FAILED +tests/scripts/rehearsal_cases.py::test_fails",
                     r"(FAILED +tests/scripts/rehearsal_cases.py::test_hangs|crashed.*test_hangs)"):
            assert re.search(line, summary), line


def test_results_json_and_the_archive_come_from_this_run(rehearsal):
    out, _, _, started = rehearsal
    results = (out / "results.json").read_text()
    assert results != STALE
    assert "cases" in json.loads(results)
    with tarfile.open(out / "session.tgz") as archive:
        members = archive.getmembers()
    assert all(member.mtime >= int(started) for member in members)
