"""Stand-ins for the GPU tests in the CPU rehearsal of scripts/gpu_session.sh (`--rehearse`). The name does not start
with test_, so only the rehearsal collects this file. One test passes, one fails, one hangs as a deadlocked kernel
would: the per-test timeout must end it, and the summary must name all three."""
import time

import pytest


@pytest.mark.sanitizer
def test_passes():
    assert sum(range(10)) == 45


def test_fails():
    assert 1 + 1 == 3, "a planted failure: the summary must name it"


def test_hangs():
    time.sleep(3600)
